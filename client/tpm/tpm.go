// Package tpm is a provisioning device's TPM 2.0, used as the Azure SDKs
// use it for TPM attestation (the TCG default endorsement key, a storage
// root key, the activation of the service's challenge and HMAC signing with
// the imported identity key). It satisfies client/device.TPM. Open reaches
// a TPM device file or a software TPM's raw command socket (swtpm).
package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Device is a TPM device's side of Azure's TPM attestation, done as the
// SDKs do it (Node azure-iot-security-tpm, C hsm_client_tpm): an EK and an
// SRK from the standard templates, the activation of the service's blob,
// HMAC signing with the identity key. The identity key stays loaded while
// the Device is open; it is not persisted.
type Device struct {
	t        transport.TPM
	ek, srk  *tpm2.CreatePrimaryResponse
	EK, SRK  []byte // TPM2B_PUBLIC, as sent to the service
	idHandle tpm2.TPMHandle
	idName   tpm2.TPM2BName
	closer   io.Closer
}

// New creates the device's primary keys in t from the templates the SDKs
// use (the TCG default EK, the SRK of azure-iot-security-tpm); a TPM
// derives the same keys from the same templates every time.
func New(t transport.TPM) (*Device, error) {
	ek, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpm: create the endorsement key: %w", err)
	}
	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
	}.Execute(t)
	if err != nil {
		flush(t, ek.ObjectHandle)
		return nil, fmt.Errorf("tpm: create the storage root key: %w", err)
	}
	return &Device{t: t, ek: ek, srk: srk, EK: tpm2.Marshal(ek.OutPublic), SRK: tpm2.Marshal(srk.OutPublic)}, nil
}

// EndorsementKey is the EK's public area (TPM2B_PUBLIC), as enrolled.
func (d *Device) EndorsementKey() []byte { return d.EK }

// StorageRootKey is the SRK's public area (TPM2B_PUBLIC).
func (d *Device) StorageRootKey() []byte { return d.SRK }

// ActivateIdentityKey is Activate, under the name client/device uses.
func (d *Device) ActivateIdentityKey(blob []byte) error { return d.Activate(blob) }

// Activate imports the identity key of blob into the TPM as the SDKs do:
// ActivateCredential (the EK authorised by PolicySecret(endorsement)),
// Import under the SRK with the recovered inner key, Load.
func (d *Device) Activate(blob []byte) error {
	parts, err := split(blob, 6)
	if err != nil {
		return err
	}
	cred, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle: tpm2.AuthHandle{Handle: d.ek.ObjectHandle, Name: d.ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16,
			func(t transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicySecret{
					AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
					PolicySession: h,
					NonceTPM:      nonce,
				}.Execute(t)
				return err
			})},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: parts[0]},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: parts[1]},
	}.Execute(d.t)
	if err != nil {
		return err
	}
	pub := tpm2.BytesAs2B[tpm2.TPMTPublic](parts[4])
	imp, err := tpm2.Import{
		ParentHandle:  tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		EncryptionKey: tpm2.TPM2BData{Buffer: cred.CertInfo.Buffer},
		ObjectPublic:  pub,
		Duplicate:     tpm2.TPM2BPrivate{Buffer: parts[2]},
		InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: parts[3]},
		Symmetric: tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(len(cred.CertInfo.Buffer)*8)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
	}.Execute(d.t)
	if err != nil {
		return err
	}
	if d.idHandle != 0 {
		// The TPM holds three transient objects: make room for the new key.
		if _, err := (tpm2.FlushContext{FlushHandle: d.idHandle}).Execute(d.t); err != nil {
			return err
		}
		d.idHandle = 0
	}
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    imp.OutPrivate,
		InPublic:     pub,
	}.Execute(d.t)
	if err != nil {
		return err
	}
	d.idHandle, d.idName = ld.ObjectHandle, ld.Name
	return nil
}

// Sign is the TPM's HMAC with the identity key.
func (d *Device) Sign(data []byte) ([]byte, error) {
	rsp, err := tpm2.Hmac{
		Handle:  tpm2.AuthHandle{Handle: d.idHandle, Name: d.idName, Auth: tpm2.PasswordAuth(nil)},
		Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
		HashAlg: tpm2.TPMAlgSHA256,
	}.Execute(d.t)
	if err != nil {
		return nil, err
	}
	return rsp.OutHMAC.Buffer, nil
}

func split(b []byte, n int) ([][]byte, error) {
	var out [][]byte
	for range n {
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			return nil, errShort
		}
		l := int(binary.BigEndian.Uint16(b))
		out = append(out, b[2:2+l])
		b = b[2+l:]
	}
	return out, nil
}

var errShort = errors.New("tpm: activation blob truncated")

// SRKName is the TPM's name of the storage root key.
func (d *Device) SRKName() []byte { return d.srk.Name.Buffer }

// Open connects to a TPM: "unix:PATH" or "tcp:HOST:PORT" for a software
// TPM's raw command channel (swtpm socket --server type=unixio or
// type=tcp), or a device file such as /dev/tpmrm0. Close releases it.
func Open(addr string) (*Device, error) {
	var rwc io.ReadWriteCloser
	switch {
	case strings.HasPrefix(addr, "unix:"):
		c, err := net.DialTimeout("unix", strings.TrimPrefix(addr, "unix:"), 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		rwc = c
	case strings.HasPrefix(addr, "tcp:"):
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(addr, "tcp:"), 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		rwc = c
	default:
		f, err := os.OpenFile(addr, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		rwc = f
	}
	conn := &Conn{rwc: rwc}
	d, err := New(conn)
	if err != nil {
		rwc.Close()
		return nil, err
	}
	d.closer = rwc
	return d, nil
}

// Close unloads the keys (a TPM without a resource manager, such as
// swtpm or /dev/tpm0, keeps them past the connection) and closes the
// connection Open made.
func (d *Device) Close() error {
	for _, h := range []tpm2.TPMHandle{d.idHandle, d.srk.ObjectHandle, d.ek.ObjectHandle} {
		if h != 0 {
			flush(d.t, h)
		}
	}
	d.idHandle = 0
	if d.closer == nil {
		return nil
	}
	return d.closer.Close()
}

// flush unloads a transient object; a failure leaves it to the TPM's
// next reset.
func flush(t transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// Conn sends raw TPM 2.0 commands over a stream and reads whole
// responses; it satisfies go-tpm's transport.TPM.
type Conn struct {
	mu  sync.Mutex
	rwc io.ReadWriteCloser
}

// NewConn wraps a stream to a TPM's command channel.
func NewConn(rwc io.ReadWriteCloser) *Conn { return &Conn{rwc: rwc} }

// maxResponse bounds a response read from the TPM.
const maxResponse = 64 * 1024

// Send sends one command and returns its response.
func (c *Conn) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.rwc.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if _, err := c.rwc.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpm: send: %w", err)
	}
	hdr := make([]byte, 6)
	if _, err := io.ReadFull(c.rwc, hdr); err != nil {
		return nil, fmt.Errorf("tpm: response header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:])
	if n < 6 || n > maxResponse {
		return nil, fmt.Errorf("tpm: response size %d", n)
	}
	resp := make([]byte, n)
	copy(resp, hdr)
	if _, err := io.ReadFull(c.rwc, resp[6:]); err != nil {
		return nil, fmt.Errorf("tpm: response: %w", err)
	}
	return resp, nil
}

// Close closes the stream.
func (c *Conn) Close() error { return c.rwc.Close() }
