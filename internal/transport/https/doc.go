// Package https serves the device registration API over HTTPS: register,
// operation status and registration status lookup, as the Azure device SDKs
// call them. It decodes requests into provision.Request and encodes the
// engine's answers; it makes no decisions of its own.
package https
