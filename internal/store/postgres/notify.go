package postgres

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dpsd/dpsd/internal/store"
)

// changesChannel is the NOTIFY channel the records table's triggers
// (migration 2) send on.
const changesChannel = "dpsd_changes"

// watchedKinds are the kinds whose writes notify (store.Watched), which the
// triggers of migration 2 name. They are what Changes delivers after it
// (re)connects, when it cannot know what changed. A test checks that the
// triggers agree.
var watchedKinds = store.Watched

// Tunables of the listening connection. Variables so tests can shorten
// them.
var (
	// listenPingInterval is how long the listening connection may be
	// silent before it is checked: a connection broken without a word
	// (a host gone, a firewall dropping idle flows) would otherwise wait
	// for notifications that never come until TCP keepalive gives up,
	// which takes many minutes.
	listenPingInterval = 30 * time.Second
	// listenPingTimeout bounds that check.
	listenPingTimeout = 10 * time.Second
	// listenRetryMin and listenRetryMax bound the wait between attempts
	// to listen again after a failure, which doubles from the first to
	// the second.
	listenRetryMin = 250 * time.Millisecond
	listenRetryMax = 30 * time.Second
)

// sqlRecordsSchema finds the schema of the records table as the session's
// search_path resolves it, which is the table this store reads and writes
// and therefore whose notifications are its own.
const sqlRecordsSchema = "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)"

var _ store.Notifier = (*Store)(nil)

// Changes implements store.Notifier with PostgreSQL's LISTEN/NOTIFY. It
// returns at once; a connection of its own, outside the pool, then
// listens until ctx ends or the store is closed, reconnecting with
// backoff after failures. Each time it starts listening it delivers every
// watched kind, so the first values tell that it listens and the later
// ones make up for notifications lost while it did not. While it cannot
// listen, changes made by other nodes reach the receiver only then, so
// callers keep a time limit on what they cache.
//
// LISTEN needs a session of its own: behind a pooler in transaction mode
// (PgBouncer's default) the notifications do not arrive, and nodes see
// other nodes' changes only when their caches expire.
func (s *Store) Changes(ctx context.Context) (<-chan store.Kind, error) {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel) // Close ends every listener
	f := newFeed()
	s.listeners.Add(2)
	go func() {
		defer s.listeners.Done()
		defer stop()
		defer cancel()
		s.listenChannel(ctx, changesChannel, func(pid uint32, _ string) {
			if s.listenHook != nil {
				s.listenHook(pid)
			}
			// Anything may have changed before this connection listened.
			f.add(watchedKinds...)
		}, func(payload, schema string) {
			f.add(changedKinds(payload, schema)...)
		})
	}()
	go func() {
		defer s.listeners.Done()
		f.forward(ctx)
	}()
	return f.out, nil
}

// listenChannel keeps a connection of its own, outside the pool,
// listening on channel until ctx ends, reconnecting with backoff after
// failures. Each time it starts listening it calls listening with the
// connection's backend pid and the schema of the records table as the
// session resolves it, by which notifications tell this store's apart
// from those of other deployments sharing the database; each
// notification's payload then goes to note with that schema. Neither
// may block: PostgreSQL keeps every notification until all listeners
// have read it (see feed).
func (s *Store) listenChannel(ctx context.Context, channel string, listening func(pid uint32, schema string), note func(payload, schema string)) {
	cfg := s.pool.Config().ConnConfig
	wait := listenRetryMin
	for {
		listened := s.listenOnce(ctx, cfg.Copy(), channel, listening, note)
		if ctx.Err() != nil {
			return
		}
		if listened {
			wait = listenRetryMin
		}
		// Jitter spreads the reconnections of many nodes after the
		// database comes back.
		d := wait/2 + rand.N(wait/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		wait = min(2*wait, listenRetryMax)
	}
}

// listenOnce connects, listens on channel and passes notifications on
// until the connection fails or ctx ends. It reports whether it got as
// far as listening.
func (s *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig, channel string, listening func(pid uint32, schema string), note func(payload, schema string)) (listened bool) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false
	}
	defer func() {
		// A bounded, clean goodbye; a dead connection is just closed.
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	var schema string
	if err := conn.QueryRow(ctx, sqlRecordsSchema, recordsTable).Scan(&schema); err != nil {
		return false
	}
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return false
	}
	listening(conn.PgConn().PID(), schema)

	for {
		wctx, cancel := context.WithTimeout(ctx, listenPingInterval)
		n, err := conn.WaitForNotification(wctx)
		timedOut := wctx.Err() != nil
		cancel()
		switch {
		case err == nil:
			note(n.Payload, schema)
		case ctx.Err() != nil:
			return true
		case timedOut && !conn.IsClosed():
			// Quiet for a while: make sure the connection still works.
			pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return true
			}
		default:
			return true
		}
	}
}

// changeNote is the payload of a notification (see migration 2).
type changeNote struct {
	Schema string     `json:"schema"`
	Kind   store.Kind `json:"kind"`
}

// changedKinds returns the kinds a notification's payload reports for the
// records table in schema: none when it is another schema's, every watched
// kind when the payload cannot be read (better a needless reload than a
// missed change).
func changedKinds(payload, schema string) []store.Kind {
	var n changeNote
	if err := json.Unmarshal([]byte(payload), &n); err != nil || n.Kind == "" {
		return watchedKinds
	}
	if n.Schema != schema {
		return nil
	}
	return []store.Kind{n.Kind}
}

// feed passes kinds from the listening connection to the receiver without
// ever making the connection wait: it keeps the kinds not yet delivered
// as a set, so a receiver that falls behind gets each kind once when it
// catches up. The connection must keep reading because PostgreSQL keeps
// every notification until all listeners have read it; one that stops
// reading makes the server's notification queue grow and, once full, fails
// every notifying write in the database.
type feed struct {
	out  chan store.Kind
	wake chan struct{} // holds a token while pending may be non-empty

	mu      sync.Mutex
	pending []store.Kind // a set, in order of arrival
}

func newFeed() *feed {
	return &feed{out: make(chan store.Kind), wake: make(chan struct{}, 1)}
}

// add records kinds for delivery; it never blocks for long.
func (f *feed) add(kinds ...store.Kind) {
	if len(kinds) == 0 {
		return
	}
	f.mu.Lock()
	for _, k := range kinds {
		if !slices.Contains(f.pending, k) {
			f.pending = append(f.pending, k)
		}
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default: // a token is already there
	}
}

// forward delivers pending kinds to out until ctx ends, then closes out.
func (f *feed) forward(ctx context.Context) {
	defer close(f.out)
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		for {
			f.mu.Lock()
			if len(f.pending) == 0 {
				f.mu.Unlock()
				break
			}
			k := f.pending[0]
			f.pending = f.pending[1:]
			f.mu.Unlock()
			select {
			case f.out <- k:
			case <-ctx.Done():
				return
			}
		}
	}
}
