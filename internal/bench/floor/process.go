package floor

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// The floor runs in a process of its own, as the server it stands for
// does. Started inside the load generator it shares the generator's Go
// scheduler: a request and its answer pass between goroutines of one
// runtime instead of waking another process, which no real server gets.
// On the 2-core machine of docs/benchmarks.md that made the floor 1.3 to
// 1.5 times as fast over HTTPS keep-alive, and 1.2 to 1.3 times with a new
// connection per device, as the same code in its own process, so every
// ratio against it measured the co-location as much as dpsd.

// ProcessOptions configure a floor in a child process. They are Options
// with the certificate itself instead of a TLS configuration, since the
// child builds its own (ServerTLS).
type ProcessOptions struct {
	IP          string
	Certificate tls.Certificate
	IDScope     string
	GroupKey    []byte
	Hub         string
	PollFirst   bool
}

// spec is what the parent writes to the child's standard input: the
// group key and the private key travel there rather than on the command
// line, where any user of the machine could read them.
type spec struct {
	IP        string `json:"ip"`
	CertPEM   string `json:"certPEM"`
	KeyPEM    string `json:"keyPEM"`
	IDScope   string `json:"idScope"`
	GroupKey  []byte `json:"groupKey"`
	Hub       string `json:"hub"`
	PollFirst bool   `json:"pollFirst"`
}

// ready is the one line the child prints once it listens.
type ready struct {
	HTTPS string `json:"https"`
	MQTT  string `json:"mqtt"`
	AMQP  string `json:"amqp"`
	PID   int    `json:"pid"`
}

// ServerTLS is the TLS configuration dpsd's device endpoint uses, for a
// floor that does the same handshake.
func ServerTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequestClientCert,
		NextProtos:   []string{"http/1.1"},
		Certificates: []tls.Certificate{cert},
	}
}

// Process is a floor running in a child process.
type Process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addrs ready
	done  chan error
}

// StartProcess runs name with args (an executable whose command calls
// ServeProcess, such as "dpsd bench-floor"), hands it opt and waits
// until it listens. The child ends when Close closes its standard input,
// and so also when this process dies.
func StartProcess(ctx context.Context, name string, args []string, opt ProcessOptions) (*Process, error) {
	sp := spec{IP: opt.IP, IDScope: opt.IDScope, GroupKey: opt.GroupKey, Hub: opt.Hub, PollFirst: opt.PollFirst}
	if len(opt.Certificate.Certificate) == 0 || opt.Certificate.PrivateKey == nil {
		return nil, errors.New("floor: a certificate with its private key is required")
	}
	for _, der := range opt.Certificate.Certificate {
		sp.CertPEM += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	key, err := x509.MarshalPKCS8PrivateKey(opt.Certificate.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("floor: private key: %w", err)
	}
	sp.KeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	in, err := json.Marshal(sp)
	if err != nil {
		return nil, err
	}

	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("floor: start %s: %w", name, err)
	}
	p := &Process{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	if _, err := stdin.Write(append(in, '\n')); err != nil {
		p.kill()
		return nil, fmt.Errorf("floor: hand over the options: %w", err)
	}
	line := make(chan error, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		if !s.Scan() {
			line <- fmt.Errorf("floor: the child ended before it listened: %v", s.Err())
			return
		}
		line <- json.Unmarshal(s.Bytes(), &p.addrs)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case err = <-line:
	case <-ctx.Done():
		err = fmt.Errorf("floor: waiting for the child to listen: %w", ctx.Err())
	}
	if err != nil {
		p.kill()
		return nil, err
	}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

func (p *Process) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// HTTPSAddr is the address of the device API and of MQTT and AMQP over
// WebSockets.
func (p *Process) HTTPSAddr() string { return p.addrs.HTTPS }

// MQTTAddr is the address of MQTT over TLS.
func (p *Process) MQTTAddr() string { return p.addrs.MQTT }

// AMQPAddr is the address of AMQP over TLS.
func (p *Process) AMQPAddr() string { return p.addrs.AMQP }

// PID is the child's process id.
func (p *Process) PID() int { return p.addrs.PID }

// Close asks the child to stop, waits for it (killing it after 10 s) and
// returns the CPU time it used in all, user and system.
func (p *Process) Close() (time.Duration, error) {
	_ = p.stdin.Close()
	var err error
	select {
	case err = <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		err = <-p.done
	}
	st := p.cmd.ProcessState
	if st == nil {
		return 0, err
	}
	return st.UserTime() + st.SystemTime(), err
}

// ServeProcess is the child's side of StartProcess: it reads the options
// from r, starts the floor, writes its addresses to w as one line of
// JSON, and serves until r ends.
func ServeProcess(r io.Reader, w io.Writer) error {
	br := bufio.NewReader(r)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("floor: read options: %w", err)
	}
	var sp spec
	if err := json.Unmarshal(line, &sp); err != nil {
		return fmt.Errorf("floor: options: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(sp.CertPEM), []byte(sp.KeyPEM))
	if err != nil {
		return fmt.Errorf("floor: certificate: %w", err)
	}
	s, err := Start(Options{
		IP: sp.IP, TLS: ServerTLS(cert), IDScope: sp.IDScope, GroupKey: sp.GroupKey, Hub: sp.Hub, PollFirst: sp.PollFirst,
	})
	if err != nil {
		return err
	}
	defer s.Close()
	out, _ := json.Marshal(ready{HTTPS: s.HTTPSAddr(), MQTT: s.MQTTAddr(), AMQP: s.AMQPAddr(), PID: os.Getpid()})
	if _, err := w.Write(append(out, '\n')); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, br) // until the parent closes its end or dies
	return nil
}
