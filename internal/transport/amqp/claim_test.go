package amqp

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	wire "github.com/dpsd/dpsd/internal/amqp"
)

// otherService is the link handler a Claim hands out: it takes every link
// and records their addresses.
type otherService struct {
	mu    sync.Mutex
	links []string
}

func (o *otherService) Attach(l *wire.Link) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.links = append(o.links, l.Address)
	return nil
}
func (o *otherService) Message(context.Context, *wire.Delivery) {}
func (o *otherService) Detach(*wire.Link)                       {}
func (o *otherService) Close(error)                             {}

func (o *otherService) attached() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.links...)
}

// TestClaimSharesTheListener: connections that name a registration stay
// the provisioning service's without being offered; the others go to
// the claimer when it says they name it, or when their first link is not
// a registration's; its refusal closes the connection with its error.
func TestClaimSharesTheListener(t *testing.T) {
	const reg = "0ne00000001/registrations/dev-1"
	for _, tc := range []struct {
		name   string
		sasl   goamqp.SASLType // nil: no SASL layer
		named  bool
		refuse *wire.Error
		first  string // the first link's address
		// want: "dps" (a register request is answered), "other" (the
		// claimer got the link), or "refused"
		want    string
		offered bool
	}{
		{name: "PLAIN registration user", sasl: goamqp.SASLTypePlain(reg, "tok"), named: true, first: reg, want: "dps"},
		{name: "no SASL, registration link", first: reg, want: "dps", offered: true},
		{name: "ANONYMOUS, registration link", sasl: goamqp.SASLTypeAnonymous(), first: reg, want: "dps", offered: true},
		{name: "C SDK registration address", first: "amqps://dps.example/" + reg, want: "dps", offered: true},
		{name: "no SASL, $cbs first", first: "$cbs", want: "other", offered: true},
		{name: "no SASL, device link first", first: "/devices/registrations/twin", want: "other", offered: true},
		{name: "named at open, registration link", named: true, first: reg, want: "other", offered: true},
		{name: "PLAIN hub user named", sasl: goamqp.SASLTypePlain("dev-1@sas.hub-a", "tok"), named: true, first: "$cbs", want: "other", offered: true},
		{name: "refused", refuse: &wire.Error{Condition: wire.ErrNotFound, Description: "no built-in hub hub-x"}, want: "refused", offered: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := &fakeEngine{}
			other := &otherService{}
			var mu sync.Mutex
			offered := false
			s, err := New(eng, Options{Claim: func(*wire.Conn) (wire.LinkHandler, bool, error) {
				mu.Lock()
				offered = true
				mu.Unlock()
				if tc.refuse != nil {
					return nil, false, tc.refuse
				}
				return other, tc.named, nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			client, server := net.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.serveConn(server, TransportAMQP, nil)
			}()
			t.Cleanup(func() {
				client.Close()
				<-done
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := goamqp.NewConn(ctx, client, &goamqp.ConnOptions{SASLType: tc.sasl})
			if err == nil {
				// go-amqp reports a refused open at the first session.
				_, err = conn.NewSession(ctx, nil)
			}
			if tc.want == "refused" {
				if err == nil || !strings.Contains(err.Error(), tc.refuse.Description) || !strings.Contains(err.Error(), string(tc.refuse.Condition)) {
					t.Fatalf("connection refused with %v, want %s: %s", err, tc.refuse.Condition, tc.refuse.Description)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sess, _ := conn.NewSession(ctx, nil)
			recv, err := sess.NewReceiver(ctx, tc.first, nil)
			if err != nil {
				t.Fatalf("attach %s: %v", tc.first, err)
			}
			switch tc.want {
			case "dps":
				send, err := sess.NewSender(ctx, tc.first, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := request(t, send, recv, map[string]any{propOperationType: opRegister}, []byte(`{"registrationId":"dev-1"}`)); err != nil {
					t.Fatalf("register on a connection left to the provisioning service: %v", err)
				}
				eng.mu.Lock()
				n := len(eng.reqs)
				eng.mu.Unlock()
				if n != 1 {
					t.Errorf("the engine got %d requests, want the register", n)
				}
				if got := other.attached(); len(got) != 0 {
					t.Errorf("the claimer got links %v", got)
				}
			case "other":
				if got := other.attached(); len(got) != 1 || got[0] != tc.first {
					t.Errorf("the claimer got links %v, want [%s]", got, tc.first)
				}
				eng.mu.Lock()
				n := len(eng.reqs)
				eng.mu.Unlock()
				if n != 0 {
					t.Errorf("the engine got %d requests", n)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if offered != tc.offered {
				t.Errorf("offered to the claimer: %v, want %v", offered, tc.offered)
			}
		})
	}
}
