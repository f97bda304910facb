// Package tpm is the service side of Azure DPS's TPM attestation: it reads
// the endorsement and storage root keys a device sends, derives the
// device's identity key, and builds the activation blob (the encrypted
// nonce challenge) that only the device's TPM can import. It needs no TPM
// of its own: TPM2_MakeCredential and the duplication of the key are done
// in software, as the TPM 2.0 specification describes them.
package tpm
