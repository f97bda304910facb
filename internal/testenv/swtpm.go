package testenv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/client/tpm"
)

// SWTPM is a software TPM 2.0 (Debian's swtpm) started for one test. Its
// command channel takes raw TPM commands on a Unix socket.
type SWTPM struct {
	socket string
}

// StartSWTPM starts swtpm with a fresh state in a temporary directory and
// stops it when the test ends. Without swtpm the test is skipped (failed
// in CI): scripts/install-test-deps.sh installs it.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		Missing(t, "swtpm not found")
	}
	// Not t.TempDir: a Unix socket's path must stay short.
	dir, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "cmd.sock")
	ctrl := filepath.Join(dir, "ctrl.sock")
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+ctrl,
		// Started and ready without a platform driving TPM2_Startup; a
		// client's own TPM2_Startup then answers TPM_RC_INITIALIZE.
		"--flags", "not-need-init,startup-clear")
	SetChildAttrs(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm did not open %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &SWTPM{socket: sock}
}

// Open connects to the TPM's command channel. swtpm serves one connection
// at a time.
func (s *SWTPM) Open() (*tpm.Conn, error) {
	c, err := net.Dial("unix", s.socket)
	if err != nil {
		return nil, fmt.Errorf("connect to swtpm: %w", err)
	}
	return tpm.NewConn(c), nil
}

// Addr is the TPM's address as client/tpm.Open and "dpsd device
// provision --tpm" take it.
func (s *SWTPM) Addr() string { return "unix:" + s.socket }

// SimulatorBridge serves the Microsoft TPM simulator's TCP protocol, which
// the official TSS libraries (tss.js, TSS.MSR) speak, on a command port and
// the platform port beside it (port+1), and forwards each command to the
// TPM. Power and NV signals are acknowledged and otherwise ignored: swtpm
// is powered on already.
type SimulatorBridge struct {
	// Host and Port are the command port's address; the platform port is
	// Port+1.
	Host string
	Port int
}

// Microsoft simulator protocol commands (TPM_TCP_PROTOCOL).
const (
	simSendCommand = 8
	simHandShake   = 15
	simSessionEnd  = 20
	simStop        = 21
)

// StartSimulatorBridge listens on host (a loopback address of the test's
// range) for the simulator protocol and forwards to tpm. It stops when the
// test ends.
func StartSimulatorBridge(t testing.TB, tpm *SWTPM, host string) *SimulatorBridge {
	t.Helper()
	var cmdL, platL net.Listener
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatalf("simulator bridge: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		p, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port+1)))
		if err != nil {
			l.Close()
			continue
		}
		cmdL, platL = l, p
		break
	}
	if cmdL == nil {
		t.Fatal("simulator bridge: no two adjacent free ports")
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cmdL.Close()
		platL.Close()
		wg.Wait()
	})
	serve := func(l net.Listener, handle func(net.Conn)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					handle(c)
				}()
			}
		}()
	}
	// swtpm serves one connection at a time: every client of the bridge
	// shares one, a command at a time.
	shared := &sharedTPM{tpm: tpm}
	t.Cleanup(shared.close)
	serve(cmdL, func(c net.Conn) {
		if err := bridgeCommands(c, shared); err != nil && !errors.Is(err, io.EOF) {
			t.Logf("simulator bridge: %v", err)
		}
	})
	serve(platL, func(c net.Conn) {
		// Every platform signal is one 32-bit code, answered with a zero.
		var b [4]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write([]byte{0, 0, 0, 0}); err != nil {
				return
			}
		}
	})
	return &SimulatorBridge{Host: host, Port: cmdL.Addr().(*net.TCPAddr).Port}
}

// sharedTPM is one connection to swtpm, opened on first use.
type sharedTPM struct {
	tpm  *SWTPM
	mu   sync.Mutex
	conn *tpm.Conn
}

func (s *sharedTPM) send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		c, err := s.tpm.Open()
		if err != nil {
			return nil, err
		}
		s.conn = c
	}
	resp, err := s.conn.Send(cmd)
	if err != nil {
		s.conn.Close()
		s.conn = nil
	}
	return resp, err
}

func (s *sharedTPM) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
}

func bridgeCommands(c net.Conn, tpm *sharedTPM) error {
	u32 := func() (uint32, error) {
		var b [4]byte
		_, err := io.ReadFull(c, b[:])
		return binary.BigEndian.Uint32(b[:]), err
	}
	for {
		code, err := u32()
		if err != nil {
			return err
		}
		switch code {
		case simHandShake:
			ver, err := u32()
			if err != nil {
				return err
			}
			// The client's version back, no properties, a zero ack.
			out := binary.BigEndian.AppendUint32(nil, ver)
			out = binary.BigEndian.AppendUint32(out, 0)
			out = binary.BigEndian.AppendUint32(out, 0)
			if _, err := c.Write(out); err != nil {
				return err
			}
		case simSendCommand:
			var loc [1]byte
			if _, err := io.ReadFull(c, loc[:]); err != nil {
				return err
			}
			n, err := u32()
			if err != nil {
				return err
			}
			if n > 64*1024 {
				return fmt.Errorf("command of %d bytes", n)
			}
			cmd := make([]byte, n)
			if _, err := io.ReadFull(c, cmd); err != nil {
				return err
			}
			resp, err := tpm.send(cmd)
			if err != nil {
				return err
			}
			out := binary.BigEndian.AppendUint32(nil, uint32(len(resp)))
			out = append(out, resp...)
			out = binary.BigEndian.AppendUint32(out, 0)
			if _, err := c.Write(out); err != nil {
				return err
			}
		case simSessionEnd, simStop:
			return nil
		default:
			return fmt.Errorf("unknown simulator command %d", code)
		}
	}
}
