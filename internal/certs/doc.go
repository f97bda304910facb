// Package certs keeps the CA certificates registered with a dpsd instance,
// the ones X.509 enrollments name in their caReferences, with Azure's proof
// of possession: a certificate is uploaded unverified, the service issues a
// random verification code, and the owner proves it holds the CA's private
// key by sending back a certificate whose subject CN is that code, signed by
// the CA. Only verified certificates vouch for devices.
//
// The package also makes test PKIs (see pki.go): a root, intermediates,
// device and verification certificates, as Azure's sample scripts do.
package certs
