// Package issuer issues device certificates from certificate signing
// requests, Azure DPS's 2025-07-01-preview certificate issuance: a device
// sends a csr with its registration and receives issuedCertificateChain.
//
// ParseRequest checks a csr against a Policy (subject, key, signature);
// an Authority signs it. Registry finds the authority an enrollment's
// clientCertificateIssuancePolicy names: "local", the node's own local CA,
// or an intermediate CA an operator stored with its key under a name.
package issuer
