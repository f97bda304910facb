package amqp

import (
	"bytes"
	"errors"
	"io"
)

// A SASLMechanism runs the server side of one SASL exchange (part 5,
// 5.3). Step is called first with the client's initial response and then
// with each response to a challenge. It returns either a challenge to send
// (done false) or the outcome (done true): nil for success, an error for an
// authentication failure. Mechanisms with challenges, such as the TPM
// mechanism of Azure DPS, fit this shape.
type SASLMechanism interface {
	Step(response []byte) (challenge []byte, done bool, err error)
}

// SASLServer offers one mechanism: its name and a constructor for each
// exchange. hostname is the sasl-init hostname, which may be empty.
type SASLServer struct {
	Name Symbol
	New  func(hostname string) SASLMechanism
}

// Plain is the PLAIN mechanism (RFC 4616): authorization id, user name and
// password. The server keeps the credentials for the application to check;
// Check, when set, may refuse them during the exchange.
type Plain struct {
	AuthzID, Username, Password string
	Check                       func(p *Plain) error
}

// ErrSASLAuth is the outcome of a refused SASL exchange.
var ErrSASLAuth = errors.New("amqp: SASL authentication failed")

// Step implements SASLMechanism.
func (p *Plain) Step(resp []byte) ([]byte, bool, error) {
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return nil, true, ErrSASLAuth
	}
	p.AuthzID, p.Username, p.Password = string(parts[0]), string(parts[1]), string(parts[2])
	if p.Check != nil {
		if err := p.Check(p); err != nil {
			return nil, true, err
		}
	}
	return nil, true, nil
}

// PlainServer offers PLAIN; check may be nil.
func PlainServer(check func(*Plain) error) SASLServer {
	return SASLServer{Name: "PLAIN", New: func(string) SASLMechanism { return &Plain{Check: check} }}
}

// Anonymous is the ANONYMOUS mechanism (RFC 4505): the trace
// information is kept, nothing is checked.
type Anonymous struct{ Trace string }

// Step implements SASLMechanism.
func (a *Anonymous) Step(resp []byte) ([]byte, bool, error) {
	a.Trace = string(resp)
	return nil, true, nil
}

// External is the EXTERNAL mechanism: the identity comes from the layer
// below (the TLS client certificate); the authorization id is kept.
type External struct{ AuthzID string }

// Step implements SASLMechanism.
func (e *External) Step(resp []byte) ([]byte, bool, error) {
	e.AuthzID = string(resp)
	return nil, true, nil
}

// CBS is the MSSBCBS mechanism of the Azure C SDK (uAMQP): the client
// sends nothing and puts its token on the $cbs node once the connection
// is open, so nothing is checked here.
type CBS struct{}

// Step implements SASLMechanism.
func (CBS) Step([]byte) ([]byte, bool, error) { return nil, true, nil }

// CBSServer offers MSSBCBS.
func CBSServer() SASLServer {
	return SASLServer{Name: "MSSBCBS", New: func(string) SASLMechanism { return CBS{} }}
}

// maxSASLRounds bounds the challenges of one exchange.
const maxSASLRounds = 16

// MaxEarlyChallenge is the longest SASL challenge whose frame fits in 512
// bytes, AMQP's minimum max-frame-size: all a client must accept before
// the connection opens.
const MaxEarlyChallenge = 487

// maxSASLFrame bounds a SASL frame: enough for a TPM endorsement key, far
// below what a connection allows once open.
const maxSASLFrame = 64 << 10

// negotiateSASL runs the server side of SASL after the client's SASL
// protocol header: it answers the header, offers the mechanisms and runs
// the chosen one. It returns the finished mechanism, or an error after
// telling the client the outcome.
func negotiateSASL(rw io.ReadWriter, servers []SASLServer) (Symbol, SASLMechanism, error) {
	names := make([]Symbol, len(servers))
	for i, s := range servers {
		names[i] = s.Name
	}
	out := header(protoSASL)
	out, err := appendFrame(out, frameSASL, 0, &saslMechanisms{Mechanisms: names}, nil)
	if err != nil {
		return "", nil, err
	}
	if _, err := rw.Write(out); err != nil {
		return "", nil, err
	}
	outcome := func(code uint8) error {
		b, err := appendFrame(nil, frameSASL, 0, &saslOutcome{Code: code}, nil)
		if err != nil {
			return err
		}
		_, err = rw.Write(b)
		return err
	}

	f, err := readSASLFrame(rw, descSASLInit)
	if err != nil {
		return "", nil, err
	}
	init, err := decodeSASLInit(f)
	if err != nil {
		return "", nil, err
	}
	var mech SASLMechanism
	for _, s := range servers {
		if s.Name == init.Mechanism {
			mech = s.New(init.Hostname)
		}
	}
	if mech == nil {
		_ = outcome(saslAuth)
		return init.Mechanism, nil, malformed("SASL mechanism %q was not offered", init.Mechanism)
	}
	resp := init.InitialResponse
	for round := 0; ; round++ {
		challenge, done, err := mech.Step(resp)
		if done {
			if err != nil {
				_ = outcome(saslAuth)
				return init.Mechanism, nil, err
			}
			return init.Mechanism, mech, outcome(saslOK)
		}
		if round >= maxSASLRounds {
			_ = outcome(saslSys)
			return init.Mechanism, nil, malformed("SASL exchange longer than %d rounds", maxSASLRounds)
		}
		b, err := appendFrame(nil, frameSASL, 0, &saslChallenge{Challenge: challenge}, nil)
		if err != nil {
			return init.Mechanism, nil, err
		}
		if _, err := rw.Write(b); err != nil {
			return init.Mechanism, nil, err
		}
		rf, err := readSASLFrame(rw, descSASLResponse)
		if err != nil {
			return init.Mechanism, nil, err
		}
		if resp, err = rf.binary(0); err != nil {
			return init.Mechanism, nil, err
		}
	}
}

func readSASLFrame(r io.Reader, want uint64) (fields, error) {
	f, err := readFrame(r, maxSASLFrame)
	if err != nil {
		return nil, err
	}
	if f.Type != frameSASL {
		return nil, malformed("AMQP frame during SASL negotiation")
	}
	return fieldsOf(f.Performative, want)
}
