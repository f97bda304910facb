package amqp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/provision"
)

// tpmSegment is the most challenge bytes one SASL challenge carries after
// its control byte: SASL frames stay within AMQP's 512-byte minimum frame
// size, which is all a client must accept before the connection opens.
const tpmSegment = 400

// Control bytes of the TPM mechanism's challenge segments: the high bit
// marks a segment of the activation blob, the next bit the last one; the
// low bits number the segments.
const (
	tpmCtrlSegment = 0x80
	tpmCtrlLast    = 0x40
)

// tpmSASL is the server side of Azure DPS's "TPM" SASL mechanism
// (docs/compatibility.md, "TPM attestation"), as the Node SDK's SaslTpm
// runs it:
//
//	client sasl-init      0x00 idScope 0x00 registrationId 0x00 EK (TPM2B_PUBLIC)
//	server challenge      0x00
//	client response       0x00 SRK (TPM2B_PUBLIC)
//	server challenge(s)   ctrl blob-segment   (ctrl 0x80|n, the last 0xC0|n)
//	client response       0x00                (after each segment but the last)
//	client response       0x00 SAS token      (after the last, signed with the activated key)
//
// The SAS token is verified by the engine with each request on the
// connection, as PLAIN's are; only a device the engine gives a challenge
// to gets this far.
type tpmSASL struct {
	s *Server

	scope, regID string
	ek, srk      []byte
	segments     [][]byte
	sent         int
	sasToken     string
}

func (m *tpmSASL) Step(resp []byte) ([]byte, bool, error) {
	if len(resp) == 0 || resp[0] != 0 {
		return nil, true, wire.ErrSASLAuth
	}
	resp = resp[1:]
	switch {
	case m.ek == nil:
		parts := bytes.SplitN(resp, []byte{0}, 3)
		if len(parts) != 3 || len(parts[0]) == 0 || len(parts[1]) == 0 || len(parts[2]) == 0 {
			return nil, true, wire.ErrSASLAuth
		}
		m.scope, m.regID, m.ek = string(parts[0]), string(parts[1]), parts[2]
		return []byte{0}, false, nil
	case m.srk == nil:
		if len(resp) == 0 {
			return nil, true, wire.ErrSASLAuth
		}
		m.srk = resp
		blob, err := m.challenge()
		if err != nil {
			m.s.log.Debug("amqp TPM challenge refused", "registrationId", m.regID, "err", err)
			return nil, true, wire.ErrSASLAuth
		}
		for len(blob) > 0 {
			n := min(len(blob), tpmSegment)
			m.segments = append(m.segments, blob[:n])
			blob = blob[n:]
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
