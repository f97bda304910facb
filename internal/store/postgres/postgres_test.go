package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
	"github.com/dpsd/dpsd/internal/store/storetest"
)

// openFresh opens a store on a new, empty schema.
func openFresh(t *testing.T) (*Store, string) {
	t.Helper()
	dsn := pgtest.Schema(t)
	s, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, dsn
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openFresh(t)
		return s
	})
}

// TestConformanceTwoStores runs the suite with writes and reads spread over
// two Stores on one database, as two dpsd nodes would use it: every
// guarantee must hold across processes, not only within one pool.
func TestConformanceTwoStores(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		a, dsn := openFresh(t)
		b, err := Open(t.Context(), dsn)
		if err != nil {
			t.Fatalf("Open second store: %v", err)
		}
		return &alternating{stores: [2]*Store{a, b}}
	})
}

// alternating sends successive calls to two stores in turn.
type alternating struct {
	stores [2]*Store
	mu     sync.Mutex
	next   int
}

func (a *alternating) Apply(ctx context.Context, writes []store.Write) ([]store.Record, error) {
	return a.pick().Apply(ctx, writes)
}

func (a *alternating) pick() *Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next ^= 1
	return a.stores[a.next]
}

func (a *alternating) Get(ctx context.Context, kind store.Kind, id string) (store.Record, error) {
	return a.pick().Get(ctx, kind, id)
}

func (a *alternating) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	return a.pick().Put(ctx, rec, cond)
}

func (a *alternating) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	return a.pick().Delete(ctx, kind, id, cond)
}

func (a *alternating) List(ctx context.Context, kind store.Kind, opt store.ListOptions) ([]store.Record, bool, error) {
	return a.pick().List(ctx, kind, opt)
}

func (a *alternating) Close() error {
	return errors.Join(a.stores[0].Close(), a.stores[1].Close())
}

func TestMigrationRace(t *testing.T) {
	const nodes = 8
	dsn := pgtest.Schema(t)
	// All Opens start together on an empty schema, as nodes of a fresh
	// deployment started by one orchestrator would.
	start := make(chan struct{})
	stores := make([]*Store, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = Open(t.Context(), dsn)
		})
	}
	close(start)
	wg.Wait()
	latest := migrations[len(migrations)-1].version
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
		if v, err := stores[i].SchemaVersion(t.Context()); err != nil || v != latest {
			t.Errorf("store %d: SchemaVersion = %d, %v; want %d", i, v, err, latest)
		}
	}

	conn := pgtest.Conn(t, dsn)
	var applied, distinct int
	if err := conn.QueryRow(t.Context(), "SELECT count(*), count(DISTINCT version) FROM "+migrationsTable).Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	if applied != len(migrations) || distinct != len(migrations) {
		t.Errorf("%s has %d rows (%d versions), want each of the %d migrations once", migrationsTable, applied, distinct, len(migrations))
	}
	// Every store works on the one schema they share.
	for i, s := range stores {
		if s == nil {
			continue
		}
		id := fmt.Sprintf("node-%d", i)
		if _, err := s.Put(t.Context(), store.Record{Kind: store.KindConfig, ID: id, Data: []byte("{}")}, store.Condition{MustNotExist: true}); err != nil {
			t.Errorf("store %d: Put: %v", i, err)
		}
	}
	recs, _, err := stores[0].List(t.Context(), store.KindConfig, store.ListOptions{})
	if err != nil || len(recs) != nodes {
		t.Errorf("List = %d records, %v; want %d", len(recs), err, nodes)
	}
}

func TestReopenKeepsData(t *testing.T) {
	s, dsn := openFresh(t)
	put, err := s.Put(t.Context(), store.Record{Kind: store.KindEnrollment, ID: "Kept", Ref: "G", Data: []byte(`{"a":1}`)}, store.Condition{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	got, err := s2.Get(t.Context(), store.KindEnrollment, "kept")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "Kept" || got.Ref != "G" || got.ETag != put.ETag || string(got.Data) != `{"a":1}` ||
		!got.Created.Equal(put.Created) || !got.Updated.Equal(put.Updated) {
		t.Errorf("after reopen Get = %+v, want %+v", got, put)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	s, dsn := openFresh(t)
	s.Close()
	conn := pgtest.Conn(t, dsn)
	if _, err := conn.Exec(t.Context(), "INSERT INTO "+migrationsTable+" (version, name) VALUES (999, 'from the future')"); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(t.Context(), dsn)
	if err == nil {
		s2.Close()
		t.Fatal("Open of a database with a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open error = %v, want it to say the schema is newer", err)
	}
}

// TestMicrosecondsUTC checks the stored time resolution: what Put returns
// is exactly what later reads return, in UTC, with no sub-microsecond
// digits that the database would drop.
func TestMicrosecondsUTC(t *testing.T) {
	s, _ := openFresh(t)
	defer s.Close()
	rec, err := s.Put(t.Context(), store.Record{Kind: store.KindRegistration, ID: "t", Data: []byte("{}")}, store.Condition{})
	if err != nil {
		t.Fatal(err)
	}
	for name, ts := range map[string]time.Time{"Created": rec.Created, "Updated": rec.Updated} {
		if ts.Location() != time.UTC || ts.Nanosecond()%1000 != 0 {
			t.Errorf("%s = %v, want UTC with whole microseconds", name, ts)
		}
	}
	if !rec.Created.Equal(rec.Updated) {
		t.Errorf("new record: Created %v != Updated %v", rec.Created, rec.Updated)
	}
}

func TestBadDSN(t *testing.T) {
	_, err := Open(t.Context(), "postgres://u:secret@127.0.0.1:notaport/db")
	if err == nil {
		t.Fatal("Open with a malformed DSN succeeded")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error reveals the password: %v", err)
	}
}

func TestOpenUnreachable(t *testing.T) {
	// A port that was free a moment ago: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = Open(t.Context(), "postgres://postgres@"+addr+"/dpsd?sslmode=disable&connect_timeout=5")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of an unreachable server: err = %v, want store.ErrUnavailable", err)
	}
}

// TestConnectionLoss cuts the network between a store and its database and
// checks that every call then fails with store.ErrUnavailable (so devices
// get 503 and Retry-After), that nothing was written meanwhile, and that
// the store recovers once the database is reachable again.
func TestConnectionLoss(t *testing.T) {
	s, p := openThroughProxy(t)
	ctx := t.Context()
	k := store.KindRegistration
	before, err := s.Put(ctx, store.Record{Kind: k, ID: "before", Data: []byte("{}")}, store.Condition{})
	if err != nil {
		t.Fatal(err)
	}

	p.cut()
	calls := []struct {
		name string
		fn   func() error
	}{
		{"Get", func() error { _, err := s.Get(ctx, k, "before"); return err }},
		{"List", func() error { _, _, err := s.List(ctx, k, store.ListOptions{}); return err }},
		{"Put", func() error {
			_, err := s.Put(ctx, store.Record{Kind: k, ID: "during", Data: []byte("{}")}, store.Condition{})
			return err
		}},
		{"Put IfMatch", func() error {
			_, err := s.Put(ctx, store.Record{Kind: k, ID: "before", Data: []byte(`{"x":1}`)}, store.Condition{IfMatch: before.ETag})
			return err
		}},
		{"Delete", func() error { return s.Delete(ctx, k, "before", store.Condition{}) }},
		{"Ping", func() error { return s.Ping(ctx) }},
	}
	for _, c := range calls {
		if err := c.fn(); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with the database unreachable: err = %v, want store.ErrUnavailable", c.name, err)
		}
	}

	p.restore(t)
	// The pool may still hold connections broken by the cut; a few tries
	// (bounded) get past them.
	var got store.Record
	for range 5 {
		if got, err = s.Get(ctx, k, "before"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("Get after the database came back: %v", err)
	}
	if got.ETag != before.ETag || string(got.Data) != "{}" {
		t.Errorf("record changed by calls that failed: %+v, want %+v", got, before)
	}
	if _, err := s.Get(ctx, k, "during"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Put that failed during the outage was applied: Get err = %v", err)
	}
	for range 5 {
		if _, err = s.Put(ctx, store.Record{Kind: k, ID: "after", Data: []byte("{}")}, store.Condition{MustNotExist: true}); err == nil || !errors.Is(err, store.ErrUnavailable) {
			break
		}
	}
	if err != nil {
		t.Errorf("Put after the database came back: %v", err)
	}
}

// TestLostReply checks the writes whose answer is lost after the database
// committed them: Put finds out by reading its etag back and reports
// success; Delete cannot tell and reports store.ErrUnavailable.
func TestLostReply(t *testing.T) {
	s, p := openThroughProxy(t, "pool_max_conns", "1")
	ctx := t.Context()
	k := store.KindRegistration
	// Warm up: the one connection has both statements prepared, so each
	// write below is a single round trip whose answer follows the commit.
	if _, err := s.Put(ctx, store.Record{Kind: k, ID: "warm", Data: []byte("{}")}, store.Condition{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, k, "warm", store.Condition{}); err != nil {
		t.Fatal(err)
	}

	p.loseNextReplies()
	got, err := s.Put(ctx, store.Record{Kind: k, ID: "lost-reply", Data: []byte(`{"a":1}`)}, store.Condition{})
	if err != nil {
		t.Fatalf("Put whose answer was lost after it committed: %v", err)
	}
	if p.droppedReplies() != 1 {
		t.Fatalf("%d answers dropped, want 1: the test did not exercise a lost answer", p.droppedReplies())
	}
	back, err := s.Get(ctx, k, "lost-reply")
	if err != nil || back.ETag != got.ETag || !back.Updated.Equal(got.Updated) {
		t.Errorf("Get = %+v, %v; want what Put returned, %+v", back, err, got)
	}

	p.loseNextReplies()
	err = s.Delete(ctx, k, "lost-reply", store.Condition{IfMatch: got.ETag})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Delete whose answer was lost: err = %v, want store.ErrUnavailable (outcome unknown)", err)
	}
	if p.droppedReplies() != 2 {
		t.Fatalf("%d answers dropped, want 2", p.droppedReplies())
	}
}

// openThroughProxy opens a store on a fresh schema through a proxy the
// test controls, with extra DSN parameters (name, value, ...).
func openThroughProxy(t *testing.T, params ...string) (*Store, *proxy) {
	t.Helper()
	dsn := pgtest.Schema(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(cfg.Host, "/") {
		t.Skip("the test database is on a Unix socket; this test needs TCP")
	}
	p := startProxy(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	host, port, _ := net.SplitHostPort(p.addr)
	params = append([]string{"host", host, "port", port}, params...)
	for i := 0; i+1 < len(params); i += 2 {
		if dsn, err = pgtest.WithParam(dsn, params[i], params[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("Open through proxy: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

// proxy forwards TCP connections to a database and can cut them all, as a
// network failure or a database restart would.
type proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]bool
	// doomed connections (from the database) lose the next answer the
	// database sends: the proxy closes both sides instead of passing it on.
	doomed  map[net.Conn]bool
	dropped int
	wg      sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: target, addr: l.Addr().String(), conns: map[net.Conn]bool{}, doomed: map[net.Conn]bool{}}
	p.serve(l)
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve(l net.Listener) {
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				return
			}
			p.wg.Go(func() {
				_, _ = io.Copy(up, c)
				up.Close()
				c.Close()
			})
			p.wg.Go(func() {
				p.copyReplies(c, up)
				up.Close()
				c.Close()
			})
		}
	})
}

// track records a connection pair, or closes it if the proxy was cut.
func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

// copyReplies passes the database's answers on to the client, unless the
// connection is doomed.
func (p *proxy) copyReplies(client, db net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := db.Read(buf)
		if n > 0 {
			p.mu.Lock()
			doomed := p.doomed[db]
			if doomed {
				delete(p.doomed, db)
				p.dropped++
			}
			p.mu.Unlock()
			if doomed {
				return
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// loseNextReplies dooms every open connection: the next answer the
// database sends on each is dropped and the connection closed, as when
// the network fails after a statement reached the server.
func (p *proxy) loseNextReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.doomed[c] = true // only the database side ever reads from p.doomed
	}
}

func (p *proxy) droppedReplies() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
}

// cut closes the listener and every forwarded connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore listens again on the same address.
func (p *proxy) restore(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(l)
}
