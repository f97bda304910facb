package amqp

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
)

// echoMech is a server mechanism with two challenges: it sends "c1" and
// "c2" and wants "r1" and "r2" back, after an initial response "init".
type echoMech struct{ round int }

func (m *echoMech) Step(resp []byte) ([]byte, bool, error) {
	want := [][]byte{[]byte("init"), []byte("r1"), []byte("r2")}[m.round]
	if !bytes.Equal(resp, want) {
		return nil, true, ErrSASLAuth
	}
	m.round++
	if m.round == 3 {
		return nil, true, nil
	}
	return []byte{'c', byte('0' + m.round)}, false, nil
}

// answerMech is the client side: it answers challenge cN with rN, or with
// what wrong says.
type answerMech struct {
	name  Symbol
	wrong []byte
	seen  []string
}

func (m *answerMech) Name() Symbol             { return m.name }
func (m *answerMech) Initial() ([]byte, error) { return []byte("init"), nil }
func (m *answerMech) Challenge(c []byte) ([]byte, error) {
	m.seen = append(m.seen, string(c))
	if m.wrong != nil {
		return m.wrong, nil
	}
	return []byte{'r', c[1]}, nil
}

// TestClientSASL runs ClientSASL against the server's negotiation: the
// challenges reach the mechanism in order, a refusal is ErrSASLAuth, a
// mechanism the server lacks is an error before any sasl-init, and after
// success the connection is where the AMQP header goes.
func TestClientSASL(t *testing.T) {
	for _, tc := range []struct {
		name string
		mech *answerMech
		seen string
		err  string
	}{
		{"challenges", &answerMech{name: "ECHO"}, "c1,c2", ""},
		{"refused", &answerMech{name: "ECHO", wrong: []byte("no")}, "c1", "outcome auth"},
		{"not offered", &answerMech{name: "TPM"}, "", "does not offer SASL TPM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := net.Pipe()
			defer c.Close()
			srvErr := make(chan error, 1)
			go func() {
				defer s.Close()
				if id, err := readHeader(s); err != nil || id != protoSASL {
					srvErr <- errors.Join(err, errors.New("no SASL header"))
					return
				}
				_, _, err := negotiateSASL(s, []SASLServer{{Name: "ECHO", New: func(string) SASLMechanism { return &echoMech{} }}})
				if err == nil {
					// The client's AMQP header follows the outcome.
					var id byte
					if id, err = readHeader(s); err == nil && id != protoAMQP {
						err = errors.New("not the AMQP header after SASL")
					}
				}
				srvErr <- err
			}()
			err := ClientSASL(c, "host", tc.mech)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.Write(header(protoAMQP)); err != nil {
					t.Fatal(err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want %q", err, tc.err)
			}
			if tc.name == "refused" && !errors.Is(err, ErrSASLAuth) {
				t.Fatalf("a refusal is not ErrSASLAuth: %v", err)
			}
			if got := strings.Join(tc.mech.seen, ","); got != tc.seen {
				t.Fatalf("challenges seen %q, want %q", got, tc.seen)
			}
			c.Close()
			if err := <-srvErr; tc.err == "" && err != nil {
				t.Fatalf("server: %v", err)
			}
		})
	}
}

// TestMaxEarlyChallenge checks that a challenge of MaxEarlyChallenge bytes
// fills a 512-byte frame and one more byte does not fit.
func TestMaxEarlyChallenge(t *testing.T) {
	for n, want := range map[int]int{MaxEarlyChallenge: 512, MaxEarlyChallenge + 1: 513} {
		b, err := appendFrame(nil, frameSASL, 0, &saslChallenge{Challenge: make([]byte, n)}, nil)
		if err != nil || len(b) != want {
			t.Errorf("a %d-byte challenge: %d-byte frame (%v), want %d", n, len(b), err, want)
		}
	}
}
