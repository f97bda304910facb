package amqp

import (
	"errors"
	"fmt"
	"io"
	"slices"
)

// A SASLClientMechanism runs the client side of one SASL mechanism with
// challenges, such as Azure DPS's TPM mechanism, which AMQP libraries do
// not offer. Initial is the sasl-init's initial response; Challenge answers
// each server challenge with the next response.
type SASLClientMechanism interface {
	Name() Symbol
	Initial() ([]byte, error)
	Challenge(challenge []byte) ([]byte, error)
}

// ErrSASLOutcome is the error of a SASL exchange the server ended with an
// outcome other than ok. Code is the outcome: 1 auth, 2 sys, 3 sys-perm,
// 4 sys-temp.
type ErrSASLOutcome struct{ Code uint8 }

func (e *ErrSASLOutcome) Error() string {
	switch e.Code {
	case saslAuth:
		return "amqp: SASL authentication failed (outcome auth)"
	case saslSys, 3, 4:
		return fmt.Sprintf("amqp: SASL failed with a server error (outcome %d)", e.Code)
	}
	return fmt.Sprintf("amqp: SASL failed (outcome %d)", e.Code)
}

// Is makes every refusal match ErrSASLAuth.
func (e *ErrSASLOutcome) Is(target error) bool { return target == ErrSASLAuth && e.Code == saslAuth }

// ClientSASL runs the client side of SASL on a fresh connection, before an
// AMQP library opens it: the SASL protocol header, the server's
// mechanisms, the sasl-init with hostname (which may be empty) and the
// challenges, up to the outcome. On success rw is positioned where the
// AMQP protocol header goes: a library that then opens rw without SASL
// continues the connection. The caller bounds the exchange with a
// deadline on the connection.
func ClientSASL(rw io.ReadWriter, hostname string, mech SASLClientMechanism) error {
	if _, err := rw.Write(header(protoSASL)); err != nil {
		return fmt.Errorf("amqp: SASL header: %w", err)
	}
	id, err := readHeader(rw)
	if err != nil {
		return fmt.Errorf("amqp: SASL header: %w", err)
	}
	if id != protoSASL {
		return fmt.Errorf("amqp: the server answered the SASL header with protocol %d", id)
	}
	f, err := readSASLFrame(rw, descSASLMechanisms)
	if err != nil {
		return fmt.Errorf("amqp: sasl-mechanisms: %w", err)
	}
	offered, err := symbols(f.at(0))
	if err != nil {
		return fmt.Errorf("amqp: sasl-mechanisms: %w", err)
	}
	if !slices.Contains(offered, mech.Name()) {
		return fmt.Errorf("amqp: the server does not offer SASL %s (it offers %v)", mech.Name(), offered)
	}
	initial, err := mech.Initial()
	if err != nil {
		return err
	}
	if err := writeSASL(rw, descSASLInit, []any{mech.Name(), initial, optString(hostname)}); err != nil {
		return fmt.Errorf("amqp: sasl-init: %w", err)
	}
	for round := 0; ; round++ {
		fr, err := readFrame(rw, maxSASLFrame)
		if err != nil {
			return fmt.Errorf("amqp: SASL: %w", err)
		}
		if fr.Type != frameSASL {
			return errors.New("amqp: AMQP frame during SASL negotiation")
		}
		if f, err := fieldsOf(fr.Performative, descSASLOutcome); err == nil {
			code, err := f.ubyte(0, saslSys)
			if err != nil {
				return fmt.Errorf("amqp: sasl-outcome: %w", err)
			}
			if code != saslOK {
				return &ErrSASLOutcome{Code: code}
			}
			return nil
		}
		f, err := fieldsOf(fr.Performative, descSASLChallenge)
		if err != nil {
			return fmt.Errorf("amqp: SASL: %w", err)
		}
		if round >= maxSASLRounds {
			return fmt.Errorf("amqp: SASL exchange longer than %d rounds", maxSASLRounds)
		}
		challenge, err := f.binary(0)
		if err != nil {
			return fmt.Errorf("amqp: sasl-challenge: %w", err)
		}
		resp, err := mech.Challenge(challenge)
		if err != nil {
			return err
		}
		if err := writeSASL(rw, descSASLResponse, []any{resp}); err != nil {
			return fmt.Errorf("amqp: sasl-response: %w", err)
		}
	}
}

type saslFrame struct {
	code   uint64
	fields []any
}

func (p *saslFrame) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{p.code, trim(p.fields)})
}

func writeSASL(w io.Writer, code uint64, fields []any) error {
	b, err := appendFrame(nil, frameSASL, 0, &saslFrame{code, fields}, nil)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// optString is s, or the null of an absent optional field.
func optString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// symbols reads a multiple symbol field: one symbol or an array of them.
func symbols(v any) ([]Symbol, error) {
	switch v := v.(type) {
	case Symbol:
		return []Symbol{v}, nil
	case Array:
		out := make([]Symbol, 0, len(v))
		for _, e := range v {
			s, ok := e.(Symbol)
			if !ok {
				return nil, fmt.Errorf("mechanism %T is not a symbol", e)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("mechanisms are a %T, not symbols", v)
}
