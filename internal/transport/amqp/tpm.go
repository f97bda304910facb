package amqp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/tpm"
)

// tpmSegment is the most blob bytes one SASL challenge carries after its
// control byte: SASL frames stay within AMQP's 512-byte minimum frame
// size, which is all a client must accept before the connection opens.
const tpmSegment = wire.MaxEarlyChallenge - 1

// tpmMinSegments is the fewest segments a blob is sent in: the Java SDK's
// AmqpsProvisioningSaslHandler takes exactly two, control bytes 0x80 and
// 0xC1, and the others take any number (up to four with C and C#).
const tpmMinSegments = 2

// Control bytes of the TPM mechanism's challenge segments: the high bit
// marks a segment of the activation blob, the next bit the last one; the
// low bits number the segments.
const (
	tpmCtrlSegment = 0x80
	tpmCtrlLast    = 0x40
)

// tpmMaxSequenced is the most segments a client that checks the sequence
// numbers accepts: the C and C# SDKs compare the control byte's two low
// bits with a counter they never wrap, so a fifth segment fails there.
const tpmMaxSequenced = 4

// tpmVariant is the framing a TPM device's SDK uses, told by its
// initial response (docs/compatibility.md, "TPM attestation").
type tpmVariant int

const (
	// tpmScoped: 0x00 idScope 0x00 registrationId 0x00 EK, the blob sent
	// raw. The Node SDK, the C SDK's prov_sasl_tpm.c since the scope moved
	// into the mechanism, and the C# SDK's SaslTpmHandler.
	tpmScoped tpmVariant = iota
	// tpmEKOnly: 0x00 EK alone, the identity in the sasl-init hostname
	// or, failing that, the instance's scope and the registration id the
	// early C SDK derived from the EK; the blob sent as base64 text. The
	// first revisions of the C SDK's prov_sasl_tpm.c and of C#'s
	// SaslTpmHandler.
	tpmEKOnly
)

func (v tpmVariant) String() string {
	if v == tpmEKOnly {
		return "ek-only"
	}
	return "scoped"
}

// tpmInit is what a TPM device's sasl-init says.
type tpmInit struct {
	variant      tpmVariant
	scope, regID string
	ek           []byte
}

// parseTPMInit reads the TPM mechanism's initial response. hostname is the
// sasl-init hostname, scope the instance's ID scope; both may be empty.
func parseTPMInit(resp []byte, hostname, scope string) (tpmInit, error) {
	if len(resp) == 0 {
		return tpmInit{}, errors.New("empty initial response")
	}
	if resp[0] != 0 {
		// The C SDKs would send an EK too large for one frame in chunks
		// with control bytes, but cannot send the chunks after the
		// first: no SDK completes that exchange.
		return tpmInit{}, fmt.Errorf("initial response control byte 0x%02x, want 0x00 (chunked endorsement keys are not supported)", resp[0])
	}
	body := resp[1:]
	if _, err := tpm.ParseStorageKey(body); err == nil && len(body) >= 2 && int(body[0])<<8|int(body[1]) == len(body)-2 {
		in := tpmInit{variant: tpmEKOnly, ek: body}
		if hostname != "" {
			s, id, ok := parseIdentity(hostname)
			if !ok {
				return tpmInit{}, fmt.Errorf("sasl-init hostname %q is not {idScope}/registrations/{registrationId}", hostname)
			}
			in.scope, in.regID = s, id
			return in, nil
		}
		if scope == "" {
			return tpmInit{}, errors.New("the endorsement key came without a scope or registration id")
		}
		in.scope, in.regID = scope, ekRegistrationID(body)
		return in, nil
	}
	parts := bytes.SplitN(body, []byte{0}, 3)
	if len(parts) != 3 || len(parts[0]) == 0 || len(parts[1]) == 0 || len(parts[2]) == 0 {
		return tpmInit{}, errors.New("initial response is not idScope 0x00 registrationId 0x00 endorsementKey")
	}
	return tpmInit{variant: tpmScoped, scope: string(parts[0]), regID: string(parts[1]), ek: parts[2]}, nil
}

// ekRegistrationID is the registration id the early C SDK gave a TPM
// device it was given none for: the SHA-256 of the endorsement key as
// sent, base32 without padding, in lower case.
func ekRegistrationID(ek []byte) string {
	sum := sha256.Sum256(ek)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
}

// tpmSASL is the server side of Azure DPS's "TPM" SASL mechanism
// (docs/compatibility.md, "TPM attestation"):
//
//	client sasl-init      0x00 idScope 0x00 registrationId 0x00 EK (TPM2B_PUBLIC)
//	                      or 0x00 EK (the early C and C# SDKs)
//	server challenge      0x00
//	client response       0x00 SRK (TPM2B_PUBLIC)
//	server challenge(s)   ctrl blob-segment   (ctrl 0x80|n, the last 0xC0|n)
//	client response       0x00                (after each segment but the last)
//	client response       0x00 SAS token      (after the last, signed with the activated key)
//
// The blob is sent raw, or as base64 text to a device that sent its EK
// alone. The SAS token is verified by the engine with each request on the
// connection, as PLAIN's are; only a device the engine gives a challenge
// to gets this far.
type tpmSASL struct {
	s        *Server
	hostname string

	variant      tpmVariant
	scope, regID string
	ek, srk      []byte
	segments     [][]byte
	sent         int
	sasToken     string
}

func (m *tpmSASL) Step(resp []byte) ([]byte, bool, error) {
	if m.ek == nil {
		in, err := parseTPMInit(resp, m.hostname, m.s.scope)
		if err != nil {
			m.s.log.Debug("amqp TPM init refused", "err", err)
			return nil, true, wire.ErrSASLAuth
		}
		m.variant, m.scope, m.regID, m.ek = in.variant, in.scope, in.regID, in.ek
		return []byte{0}, false, nil
	}
	if len(resp) == 0 || resp[0] != 0 {
		return nil, true, wire.ErrSASLAuth
	}
	resp = resp[1:]
	switch {
	case m.srk == nil:
		if len(resp) == 0 {
			return nil, true, wire.ErrSASLAuth
		}
		m.srk = resp
		blob, err := m.challenge()
		if err == nil {
			m.segments = tpmSegments(blob, m.variant)
			if m.variant == tpmEKOnly && len(m.segments) > tpmMaxSequenced {
				err = fmt.Errorf("activation blob of %d bytes needs %d segments, more than the %d the SDK numbers", len(blob), len(m.segments), tpmMaxSequenced)
			}
		}
		if err != nil {
			m.s.log.Debug("amqp TPM challenge refused", "registrationId", m.regID, "variant", m.variant, "err", err)
			return nil, true, wire.ErrSASLAuth
		}
		return m.segment(), false, nil
	case m.sent < len(m.segments):
		return m.segment(), false, nil
	default:
		if len(resp) == 0 {
			return nil, true, wire.ErrSASLAuth
		}
		m.sasToken = string(resp)
		return nil, true, nil
	}
}

// tpmSegments splits the activation blob into challenge segments of equal
// size, at least two and as few as fit, as base64 text for a device that
// sent its EK alone. An RSA-2048 EK and SRK give a 766-byte blob: two
// segments, which every SDK takes.
func tpmSegments(blob []byte, v tpmVariant) [][]byte {
	if v == tpmEKOnly {
		blob = []byte(base64.StdEncoding.EncodeToString(blob))
	}
	n := max(tpmMinSegments, (len(blob)+tpmSegment-1)/tpmSegment)
	size := max(1, (len(blob)+n-1)/n)
	var segs [][]byte
	for len(blob) > 0 {
		k := min(len(blob), size)
		segs = append(segs, blob[:k])
		blob = blob[k:]
	}
	return segs
}

// segment returns the next challenge segment with its control byte.
func (m *tpmSASL) segment() []byte {
	ctrl := byte(tpmCtrlSegment | m.sent&0x3f)
	if m.sent == len(m.segments)-1 {
		ctrl |= tpmCtrlLast
	}
	out := append([]byte{ctrl}, m.segments[m.sent]...)
	m.sent++
	return out
}

// challenge asks the engine for the device's activation blob: a register
// request with the device's keys and no proof.
func (m *tpmSASL) challenge() ([]byte, error) {
	ctx, cancel := context.WithTimeout(m.s.baseCtx, m.s.handshake)
	defer cancel()
	_, err := m.s.prov.Register(ctx, provision.Request{
		IDScope:        m.scope,
		RegistrationID: m.regID,
		TPM:            m.keys(),
		Transport:      TransportAMQP,
	})
	var ch *provision.TPMChallenge
	if !errors.As(err, &ch) {
		if err == nil {
			return nil, errors.New("the engine registered a TPM device without a proof")
		}
		return nil, err
	}
	blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
	if err != nil {
		return nil, fmt.Errorf("activation blob: %w", err)
	}
	return blob, nil
}

// keys are the device's TPM keys as a register body carries them.
func (m *tpmSASL) keys() *dps.TPMAttestation {
	return &dps.TPMAttestation{
		EndorsementKey: base64.StdEncoding.EncodeToString(m.ek),
		StorageRootKey: base64.StdEncoding.EncodeToString(m.srk),
	}
}
