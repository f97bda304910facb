// Package hub registers provisioned devices in their IoT hub: Registrar
// implements provision.Registrar on top of any azurehub.Registry, a real
// Azure IoT hub reached over REST (azurehub.Client) or a hub built into dpsd
// (package builtinhub) reached by direct calls.
package hub
