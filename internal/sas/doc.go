// Package sas implements Azure shared access signatures: the tokens that
// services and devices send, the keys devices derive from enrollment group
// keys, and the connection strings that carry policy keys.
package sas
