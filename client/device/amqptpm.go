package device

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	wire "github.com/dpsd/dpsd/internal/amqp"
)

// maxTPMBlob bounds the activation blob a TPM device collects from SASL
// challenges; real blobs are about a kilobyte.
const maxTPMBlob = 16 << 10

// tpmSASL is the client side of Azure DPS's "TPM" SASL mechanism as the
// Node SDK's SaslTpm speaks it (docs/compatibility.md, "TPM attestation"):
// the initial response 0x00 idScope 0x00 registrationId 0x00 EK; the SRK
// after the first (0x00) challenge; the activation blob in segments whose
// control byte has bit 7 set, bit 6 on the last, the sequence number in
// the two low bits; 0x00 after each segment but the last and 0x00 SAS token
// after it, the token signed with the key the TPM just activated.
type tpmSASL struct {
	s       *settings
	srkSent bool
	blob    []byte
	seq     int
}

func (m *tpmSASL) Name() wire.Symbol { return "TPM" }

func (m *tpmSASL) Initial() ([]byte, error) {
	b := append([]byte{0}, m.s.IDScope...)
	b = append(b, 0)
	b = append(b, m.s.RegistrationID...)
	b = append(b, 0)
	return append(b, m.s.TPM.EndorsementKey()...), nil
}

func (m *tpmSASL) Challenge(ch []byte) ([]byte, error) {
	if len(ch) == 0 {
		return nil, errors.New("device: empty TPM SASL challenge")
	}
	ctrl := ch[0]
	if ctrl&0x80 == 0 {
		if m.srkSent {
			return nil, errors.New("device: the service asked for the storage root key twice")
		}
		m.srkSent = true
		return append([]byte{0}, m.s.TPM.StorageRootKey()...), nil
	}
	// The sequence number is checked as the C SDK checks it: two bits.
	if int(ctrl&0x03) != m.seq&0x03 {
		return nil, fmt.Errorf("device: TPM challenge segment %d arrived numbered %d", m.seq, ctrl&0x03)
	}
	m.seq++
	if len(m.blob)+len(ch)-1 > maxTPMBlob {
		return nil, fmt.Errorf("device: TPM activation blob over %d bytes", maxTPMBlob)
	}
	m.blob = append(m.blob, ch[1:]...)
	if ctrl&0x40 == 0 {
		return []byte{0}, nil
	}
	if err := m.s.TPM.ActivateIdentityKey(m.blob); err != nil {
		return nil, fmt.Errorf("device: the TPM refused the challenge: %w", err)
	}
	m.s.tpmActivated = true
	tok, err := m.s.token(time.Now())
	if err != nil {
		return nil, err
	}
	return append([]byte{0}, tok...), nil
}

// tpmSASLError turns the SASL outcome of a refused TPM device into the
// 401 the HTTPS exchange gives it.
func tpmSASLError(regID string, err error) error {
	var o *wire.ErrSASLOutcome
	if errors.As(err, &o) && o.Code == 1 {
		return &Error{Op: "connect", StatusCode: http.StatusUnauthorized, Detail: &dps.Error{
			ErrorCode: dps.CodeUnauthorized,
			Message:   fmt.Sprintf("TPM attestation of %s refused (SASL outcome auth): no TPM enrollment for this registration and endorsement key, or the proof was refused", regID),
		}}
	}
	return fmt.Errorf("device: AMQP TPM SASL %s: %w", regID, err)
}
