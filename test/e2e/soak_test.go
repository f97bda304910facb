package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

var (
	soakDuration = flag.Duration("soak.duration", 45*time.Second, "how long TestSoakUnderHostileLoad keeps hostile clients and the SDK going")
	soakConns    = flag.Int("soak.conns", 60, "hostile connections held open at once per kind in TestSoakUnderHostileLoad")
)

// Bounds of the soak's check that the node gives back what the load took.
const (
	settleTimeout  = 90 * time.Second
	goroutineSlack = 40
	fdSlack        = 40
	heapSlackBytes = 16 << 20
	// The Go runtime gives freed memory back to the system gradually, so
	// resident memory stays above the heap for a while after a load.
	rssSlackBytes    = 128 << 20
	hostileSourceNet = "127.0.20." // hostile clients' source addresses, one per connection in turn
)

// TestSoakUnderHostileLoad holds hundreds of hostile connections of every
// kind open against one node (silent TCP, slow bodies, wrong keys over
// MQTT, silent MQTT, WebSocket and AMQP sessions, a storm of wrong-key
// registers, silent connections to a built-in hub) while the official SDK
// registers devices over all five transports: every registration must
// succeed, no hostile request may get a 5xx, every held connection must be
// cut by the node, and goroutines, file descriptors and memory must come
// back near where they were. -soak.duration and -soak.conns scale it; the
// figures in docs/operations.md come from a longer run.
func TestSoakUnderHostileLoad(t *testing.T) {
	nodeTool(t)
	ip := pickAddress(t)
	debugAddr := net.JoinHostPort(ip, "6060")
	srv, err := tryStart(t, ip, "--debug-addr", debugAddr, "--log-level", "info")
	if err != nil {
		t.Fatal(err)
	}
	pid := srv.Pid()

	// A round of registrations warms up every transport's pools before
	// the baseline.
	runNodeTestsEnv(t, srv, "soak.test.js", "DPSD_SOAK_MS=0")
	base := sample(t, pid, debugAddr)
	t.Logf("baseline: %s", base)

	ctx, cancel := context.WithTimeout(t.Context(), *soakDuration)
	defer cancel()
	h := newHostile(t, srv)
	var wg sync.WaitGroup
	h.start(ctx, &wg)

	// Let the hostile connections build up, then register throughout.
	time.Sleep(min(3*time.Second, *soakDuration/4))
	peak := sample(t, pid, debugAddr)
	sdkMS := max(time.Until(deadlineOf(ctx))-2*time.Second, 0).Milliseconds()
	runNodeTestsEnv(t, srv, "soak.test.js", "DPSD_SOAK_MS="+strconv.FormatInt(sdkMS, 10))
	during := sample(t, pid, debugAddr)
	<-ctx.Done()
	wg.Wait()
	if during.goroutines > peak.goroutines {
		peak = during
	}
	t.Logf("under load: %s", peak)
	h.report(t)

	// The hostile clients are gone: the node must give back what they
	// took.
	var after stats
	deadline := time.Now().Add(settleTimeout)
	for {
		after = sample(t, pid, debugAddr)
		if after.goroutines <= base.goroutines+goroutineSlack && after.fds <= base.fds+fdSlack && after.heap <= base.heap+heapSlackBytes {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%v after the load ended: %s, baseline %s", settleTimeout, after, base)
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("after: %s", after)
	if after.rss > base.rss+rssSlackBytes {
		t.Errorf("resident memory %d MiB after the load, baseline %d MiB", after.rss>>20, base.rss>>20)
	}
	if code := healthz(t, srv); code != http.StatusOK {
		t.Errorf("/healthz after the soak: HTTP %d", code)
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// stats is what the soak watches of the node.
type stats struct {
	goroutines int
	fds        int
	rss        int64
	heap       int64 // bytes of the Go heap in use
}

func (s stats) String() string {
	return fmt.Sprintf("%d goroutines, %d open files, %d MiB resident, %d MiB of heap in use", s.goroutines, s.fds, s.rss>>20, s.heap>>20)
}

func sample(t *testing.T, pid int, debugAddr string) stats {
	t.Helper()
	var s stats
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("open files of dpsd: %v", err)
	}
	s.fds = len(ents)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			s.rss = kb << 10
		}
	}
	c := http.Client{Timeout: 10 * time.Second}
	// A heap profile with gc=1 collects first, so the heap figure is what
	// is live, not garbage an idle node has not collected yet.
	if resp, err := c.Get("http://" + debugAddr + "/debug/pprof/heap?gc=1"); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := c.Get("http://" + debugAddr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			s.goroutines, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			s.heap = int64(f)
		}
	}
	return s
}

func healthz(t *testing.T, srv *dpsdServer) int {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: serverTLS(t, srv, "")}}
	resp, err := c.Get("https://" + net.JoinHostPort(srv.IP, "443") + "/healthz")
	if err != nil {
		t.Errorf("/healthz: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func serverTLS(t *testing.T, srv *dpsdServer, name string) *tls.Config {
	t.Helper()
	if name == "" {
		name = srv.IP
	}
	return &tls.Config{RootCAs: srv.roots(t), ServerName: name}
}

// hostile runs the hostile clients and counts what happened to them.
type hostile struct {
	t     *testing.T
	srv   *dpsdServer
	kinds []hostileKind
	src   atomic.Uint32
}

type hostileKind struct {
	name  string
	bound time.Duration // how long the node may hold it; 0 when it ends on its own
	run   func(ctx context.Context, c net.Conn) error
	dial  func(ctx context.Context) (net.Conn, error)

	opened, cut atomic.Int64
	maxHeld     atomic.Int64 // nanoseconds
	fiveXX      atomic.Int64
}

// dialer returns a dialer from the next hostile source address, so the
// per-source connection cap does not stop the load before the node's
// other defences are reached.
func (h *hostile) dialer() *net.Dialer {
	n := h.src.Add(1)%250 + 1
	return &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(hostileSourceNet + strconv.Itoa(int(n)))}}
}

func (h *hostile) tcp(addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) { return h.dialer().DialContext(ctx, "tcp", addr) }
}

func (h *hostile) tls(addr, name string) func(ctx context.Context) (net.Conn, error) {
	cfg := serverTLS(h.t, h.srv, name)
	cfg.NextProtos = nil
	return func(ctx context.Context) (net.Conn, error) {
		d := tls.Dialer{NetDialer: h.dialer(), Config: cfg}
		return d.DialContext(ctx, "tcp", addr)
	}
}

func newHostile(t *testing.T, srv *dpsdServer) *hostile {
	h := &hostile{t: t, srv: srv}
	https := net.JoinHostPort(srv.IP, "443")
	mqtts := net.JoinHostPort(srv.IP, "8883")
	amqps := net.JoinHostPort(srv.IP, "5671")
	scope := srv.Info.IDScope
	wrongKey := "SharedAccessSignature sr=" + scope + "%2Fregistrations%2Fintruder&sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D&se=4102444800&skn=registration"
	silent := func(ctx context.Context, c net.Conn) error { return waitClosed(ctx, c) }

	h.kinds = []hostileKind{
		{name: "silent TCP on HTTPS", bound: 10 * time.Second, dial: h.tcp(https), run: silent},
		{name: "slow register body", bound: 30 * time.Second, dial: h.tls(https, ""), run: func(ctx context.Context, c net.Conn) error {
			fmt.Fprintf(c, "PUT /%s/registrations/intruder/register?api-version=2021-06-01 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{", scope, h.srv.IP)
			go func() { // a byte every 2 s until the node cuts it
				for ctx.Err() == nil {
					time.Sleep(2 * time.Second)
					if _, err := c.Write([]byte(" ")); err != nil {
						return
					}
				}
			}()
			return waitClosed(ctx, c)
		}},
		{name: "MQTT wrong key, keep-alive 0", bound: 30 * time.Second, dial: h.tls(mqtts, ""), run: func(ctx context.Context, c net.Conn) error {
			user := scope + "/registrations/intruder/api-version=2019-03-31"
			c.Write(mqttConnect("intruder", user, wrongKey))
			c.Write(mqttPublish("$dps/registrations/PUT/iotdps-register/?$rid=1", `{"registrationId":"intruder"}`))
			return waitClosed(ctx, c)
		}},
		{name: "silent MQTT", bound: 30 * time.Second, dial: h.tls(mqtts, ""), run: silent},
		{name: "silent MQTT over WebSockets", bound: 30 * time.Second, dial: func(ctx context.Context) (net.Conn, error) {
			d := websocket.Dialer{NetDialContext: h.dialer().DialContext, TLSClientConfig: serverTLS(h.t, h.srv, ""), Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
			ws, resp, err := d.DialContext(ctx, "wss://"+https+"/$iothub/websocket", nil)
			if err != nil {
				return nil, err
			}
			resp.Body.Close()
			return ws.NetConn(), nil
		}, run: silent},
		{name: "silent AMQP", bound: 30 * time.Second, dial: h.tls(amqps, ""), run: silent},
		{name: "wrong-key register storm", dial: h.tls(https, ""), run: func(ctx context.Context, c net.Conn) error {
			return storm(ctx, c, h, scope, wrongKey)
		}},
	}
	hub := net.JoinHostPort(srv.HubAddr, "8883")
	h.kinds = append(h.kinds, hostileKind{name: "silent MQTT to the built-in hub", bound: 30 * time.Second, dial: h.tls(hub, srv.Hub), run: silent})
	return h
}

// start keeps -soak.conns connections of every kind open until ctx ends.
func (h *hostile) start(ctx context.Context, wg *sync.WaitGroup) {
	for i := range h.kinds {
		k := &h.kinds[i]
		for range *soakConns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					c, err := k.dial(ctx)
					if err != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					k.opened.Add(1)
					opened := time.Now()
					err = k.run(ctx, c)
					c.Close()
					if ctx.Err() == nil && err != nil {
						if errors.Is(err, errServerError) {
							k.fiveXX.Add(1)
						}
						k.cut.Add(1)
						held := int64(time.Since(opened))
						for m := k.maxHeld.Load(); held > m && !k.maxHeld.CompareAndSwap(m, held); m = k.maxHeld.Load() {
						}
					}
				}
			}()
		}
	}
}

// report logs what each kind saw and fails for what the node let through.
func (h *hostile) report(t *testing.T) {
	for i := range h.kinds {
		k := &h.kinds[i]
		held := time.Duration(k.maxHeld.Load())
		t.Logf("%-34s opened %5d, cut by dpsd %5d, longest held %v", k.name, k.opened.Load(), k.cut.Load(), held.Round(100*time.Millisecond))
		if k.fiveXX.Load() > 0 {
			t.Errorf("%s: %d answers were 5xx", k.name, k.fiveXX.Load())
		}
		if k.bound > 0 && *soakDuration > k.bound+10*time.Second && k.cut.Load() == 0 {
			t.Errorf("%s: dpsd cut none in %v (bound %v)", k.name, *soakDuration, k.bound)
		}
		if k.bound > 0 && held > k.bound+15*time.Second {
			t.Errorf("%s: dpsd held one %v (bound %v)", k.name, held, k.bound)
		}
	}
}

var errServerError = errors.New("5xx answer")

// waitClosed reads until the node closes c (an error) or ctx ends (nil).
func waitClosed(ctx context.Context, c net.Conn) error {
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		c.Close()
		<-done
		return nil
	}
}

// storm sends wrong-key registers back to back on one keep-alive
// connection: each must be refused (401) or throttled (429), never a 5xx.
func storm(ctx context.Context, c net.Conn, h *hostile, scope, token string) error {
	br := bufio.NewReader(c)
	body := `{"registrationId":"intruder"}`
	for i := 0; ctx.Err() == nil; i++ {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		id := "intruder-" + strconv.Itoa(i%50)
		fmt.Fprintf(c, "PUT /%s/registrations/%s/register?api-version=2021-06-01 HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			scope, id, h.srv.IP, token, len(body), body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("%w: HTTP %d", errServerError, resp.StatusCode)
		}
		if resp.Close {
			return io.EOF
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// mqttConnect is an MQTT 3.1.1 CONNECT with a user name, a password and
// no keep-alive.
func mqttConnect(clientID, user, pass string) []byte {
	return mqttEncode(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Clean: true, Keepalive: 0,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass),
		},
	})
}

// mqttPublish is a QoS 0 PUBLISH.
func mqttPublish(topic, payload string) []byte {
	return mqttEncode(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     []byte(payload),
	})
}

// mqttEncode encodes a CONNECT or PUBLISH as a 3.1.1 client sends it.
func mqttEncode(pk packets.Packet) []byte {
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	if pk.FixedHeader.Type == packets.Connect {
		err = pk.ConnectEncode(&buf)
	} else {
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		panic("encode MQTT packet: " + err.Error()) // fixed, valid packets
	}
	return buf.Bytes()
}
