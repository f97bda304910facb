package builtinhub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/eventhub"
	"github.com/dpsd/dpsd/internal/store"
)

// KindTelemetry holds a hub's telemetry: one record per message, id =
// hub/sequence number (20 digits, so ids sort as numbers), and one mark,
// id = hub name, with the numbering the hub has reached. Ref = hub name.
const KindTelemetry = store.KindHubTelemetry

// Bounds of the telemetry log.
const (
	// maxLogBatch and maxLogBatchBytes bound the messages one commit
	// writes; what comes meanwhile waits for the next.
	maxLogBatch      = 512
	maxLogBatchBytes = 8 << 20
	// maxLogQueueBytes bounds the messages waiting for a commit; past it
	// a device's message is refused (as busy) rather than held.
	maxLogQueueBytes = 64 << 20
	// maxLogDeletes bounds the records of dropped messages one commit
	// deletes.
	maxLogDeletes = 1024
	// keepTimeout bounds the wait of one message for its commit.
	keepTimeout = 30 * time.Second
	// maxLogAttempts bounds the retries of a commit that met another
	// node's write.
	maxLogAttempts = 8
	// reserveBlock is how many sequence numbers, in the hub and in each
	// partition, a node reserves in the mark at a time: the mark is
	// written once per block rather than with every commit, and nodes
	// sharing the store contend for it as rarely. A crash leaves the rest
	// of the block unused, a gap in the numbering.
	reserveBlock = 1000
)

// errLogClosed refuses telemetry that arrives while the hub stops.
var errLogClosed = errors.New("the hub is stopping")

// telemetryMark is the mark record: the sequence numbers reserved, in the
// hub and in each partition of the Event Hubs-compatible endpoint, so that
// numbering goes on after a restart even when every message aged out, and
// nodes sharing the store never give one number twice. Next is the first
// number not reserved; LastOffset and LastTime, written at a clean stop,
// describe the partition's last message.
type telemetryMark struct {
	Sequence   int64           `json:"sequence"`
	Partitions []partitionMark `json:"partitions,omitempty"`
	// Messages is the telemetry of dpsd versions that kept it in the mark
	// alone, at a clean stop; read once and rewritten as records.
	Messages []Message `json:"messages,omitempty"`
}

type partitionMark struct {
	Next       int64     `json:"next"`
	LastOffset int64     `json:"lastOffset"`
	LastTime   time.Time `json:"lastTime,omitzero"`
}

// storedMessage is one message's record.
type storedMessage struct {
	Message
	Partition         int   `json:"partition"`
	PartitionSequence int64 `json:"partitionSequence"`
}

func telemetryID(hub string, seq int64) string { return fmt.Sprintf("%s/%020d", hub, seq) }

// telemetryLog writes a hub's telemetry to the store before the device
// hears that it was taken, as IoT Hub promises: an acknowledged message
// survives a crash. One goroutine writes: each commit takes every message
// waiting (up to maxLogBatch), with the mark and the deletes of the
// messages the buffer dropped, as one batch, so a burst from many devices
// costs a few commits rather than one each. Only then does the buffer
// show the messages, so readers never see one that a crash could take
// back.
type telemetryLog struct {
	st  store.Store
	hub string
	b   *messageBuffer
	log *slog.Logger

	mu     sync.Mutex
	queue  []*telemetryWrite
	bytes  int // of the queued messages
	closed bool
	wake   chan struct{} // holds a token while queue may be non-empty
	done   chan struct{} // closed when the writer has returned

	// markTag and reserved are the mark as this node last wrote or read
	// it; the writer's alone.
	markTag  string
	reserved telemetryMark
}

// telemetryWrite is the messages of one device request and the answer to
// it.
type telemetryWrite struct {
	msgs []Message
	size int
	done chan error // buffered
}

func newTelemetryLog(st store.Store, hub string, b *messageBuffer, log *slog.Logger) *telemetryLog {
	b.mu.Lock()
	b.durable = true
	b.mu.Unlock()
	return &telemetryLog{st: st, hub: hub, b: b, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// keepTelemetry makes msgs durable and visible, in order, and returns when
// they are; a hub without a store keeps them in memory only.
func (h *Hub) keepTelemetry(msgs ...Message) error {
	if h.tlog == nil {
		for _, m := range msgs {
			h.msgs.add(m)
		}
		return nil
	}
	return h.tlog.keep(msgs)
}

func (l *telemetryLog) keep(msgs []Message) error {
	w := &telemetryWrite{msgs: msgs, done: make(chan error, 1)}
	for _, m := range msgs {
		w.size += size(m)
	}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return errLogClosed
	case l.bytes > 0 && l.bytes+w.size > maxLogQueueBytes:
		l.mu.Unlock()
		return errors.New("too much telemetry waiting to be stored")
	}
	l.queue = append(l.queue, w)
	l.bytes += w.size
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(keepTimeout)
	defer t.Stop()
	select {
	case err := <-w.done:
		return err
	case <-t.C:
		return errors.New("storing telemetry timed out")
	}
}

// run writes until close; then it writes what is still queued and
// returns.
func (l *telemetryLog) run() {
	defer close(l.done)
	for range l.wake {
		for {
			batch := l.take()
			if len(batch) == 0 {
				break
			}
			l.write(batch)
		}
		l.mu.Lock()
		closed := l.closed && len(l.queue) == 0
		l.mu.Unlock()
		if closed {
			return
		}
	}
}

// start runs the writer.
func (l *telemetryLog) start() { go l.run() }

// close refuses new telemetry, waits until the queued messages are
// written, and stops the writer.
func (l *telemetryLog) close(ctx context.Context) error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
	select {
	case <-l.done:
		l.release(ctx)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take removes the next batch from the queue.
func (l *telemetryLog) take() []*telemetryWrite {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, msgs, bytes := 0, 0, 0
	for n < len(l.queue) {
		w := l.queue[n]
		if n > 0 && (msgs+len(w.msgs) > maxLogBatch || bytes+w.size > maxLogBatchBytes) {
			break
		}
		n++
		msgs += len(w.msgs)
		bytes += w.size
	}
	batch := l.queue[:n:n]
	l.queue = l.queue[n:]
	l.bytes -= bytes
	if len(l.queue) == 0 {
		l.queue = nil
	}
	return batch
}

// write commits one batch and answers its writers. A commit that meets
// another node's (the mark changed, or a record of a dropped message is
// already gone) is numbered again and retried.
func (l *telemetryLog) write(batch []*telemetryWrite) {
	var msgs []Message
	for _, w := range batch {
		msgs = append(msgs, w.msgs...)
	}
	err := l.commit(msgs)
	if err != nil {
		l.log.Warn("telemetry not stored; the devices are not acknowledged", "messages", len(msgs), "err", err)
	}
	for _, w := range batch {
		w.done <- err
	}
}

func (l *telemetryLog) commit(msgs []Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), keepTimeout)
	defer cancel()
	var err error
	for range maxLogAttempts {
		kms, mark, deletes := l.b.prepare(msgs, l.reserved)
		writes := make([]store.Write, 0, len(kms)+len(deletes)+1)
		for _, km := range kms {
			data, jerr := json.Marshal(storedMessage{Message: km.Message, Partition: km.partition, PartitionSequence: km.partSeq})
			if jerr != nil {
				return fmt.Errorf("encode telemetry: %w", jerr)
			}
			writes = append(writes, store.Write{Record: store.Record{Kind: KindTelemetry, ID: telemetryID(l.hub, km.SequenceNumber), Ref: l.hub, Data: data},
				Cond: store.Condition{MustNotExist: true}})
		}
		firstDelete := len(writes)
		for _, seq := range deletes {
			writes = append(writes, store.Write{Delete: true, Record: store.Record{Kind: KindTelemetry, ID: telemetryID(l.hub, seq)}})
		}
		if mark != nil {
			w, jerr := l.markWrite(*mark)
			if jerr != nil {
				return jerr
			}
			writes = append(writes, w)
		}
		var recs []store.Record
		recs, err = apply(ctx, l.st, writes)
		if err == nil {
			if mark != nil {
				l.markTag, l.reserved = recs[len(recs)-1].ETag, *mark
			}
			l.b.commit(kms, len(deletes))
			return nil
		}
		var be *store.BatchError
		if !errors.As(err, &be) {
			return err
		}
		if be.Index >= firstDelete && be.Index < firstDelete+len(deletes) {
			// Another node deleted it already.
			l.b.forgetDropped(deletes[be.Index-firstDelete])
			continue
		}
		// Another node reserved numbers since this one last did: reserve
		// after them.
		if rerr := l.readMark(ctx); rerr != nil {
			return rerr
		}
	}
	return fmt.Errorf("telemetry: %d attempts met other nodes' writes: %w", maxLogAttempts, err)
}

// markWrite is the write of mark, conditional on the mark this node last
// saw, so that two nodes never reserve the same numbers.
func (l *telemetryLog) markWrite(mark telemetryMark) (store.Write, error) {
	data, err := json.Marshal(mark)
	if err != nil {
		return store.Write{}, fmt.Errorf("encode telemetry mark: %w", err)
	}
	cond := store.Condition{IfMatch: l.markTag}
	if l.markTag == "" {
		cond = store.Condition{MustNotExist: true}
	}
	return store.Write{Record: store.Record{Kind: KindTelemetry, ID: l.hub, Ref: l.hub, Data: data}, Cond: cond}, nil
}

// release gives back, at a clean stop, the numbers reserved but not used,
// unless another node reserved after them: the next start then numbers on
// without a gap.
func (l *telemetryLog) release(ctx context.Context) {
	mark := l.b.used()
	if mark.Sequence >= l.reserved.Sequence && len(mark.Partitions) == len(l.reserved.Partitions) {
		same := true
		for i := range mark.Partitions {
			same = same && mark.Partitions[i].Next == l.reserved.Partitions[i].Next
		}
		if same {
			return
		}
	}
	w, err := l.markWrite(mark)
	if err == nil {
		_, err = apply(ctx, l.st, []store.Write{w})
	}
	if err != nil && !errors.Is(err, store.ErrPrecondition) {
		l.log.Debug("unused telemetry numbers not given back", "err", err)
	}
}

// apply commits writes as one batch where the store can.
func apply(ctx context.Context, st store.Store, writes []store.Write) ([]store.Record, error) {
	if b, ok := st.(store.Batcher); ok {
		return b.Apply(ctx, writes)
	}
	out := make([]store.Record, len(writes))
	for i, w := range writes {
		var err error
		if w.Delete {
			err = st.Delete(ctx, w.Record.Kind, w.Record.ID, w.Cond)
		} else {
			out[i], err = st.Put(ctx, w.Record, w.Cond)
		}
		if err != nil {
			return nil, &store.BatchError{Index: i, Kind: w.Record.Kind, ID: w.Record.ID, Err: err}
		}
	}
	return out, nil
}

// readMark reads the mark another node wrote and numbers on after it.
func (l *telemetryLog) readMark(ctx context.Context) error {
	rec, err := l.st.Get(ctx, KindTelemetry, l.hub)
	if errors.Is(err, store.ErrNotFound) {
		l.markTag = ""
		return nil
	}
	if err != nil {
		return fmt.Errorf("read telemetry mark: %w", err)
	}
	var mark telemetryMark
	if err := json.Unmarshal(rec.Data, &mark); err != nil {
		return fmt.Errorf("decode telemetry mark: %w", err)
	}
	l.markTag, l.reserved = rec.ETag, mark
	l.b.advance(mark)
	return nil
}

// prepare numbers msgs after the buffer's last message, without changing
// the buffer, and returns them with up to maxLogDeletes sequence numbers
// of dropped messages to delete, and, when they go past the numbers
// reserved, a mark that reserves more.
func (b *messageBuffer) prepare(msgs []Message, reserved telemetryMark) ([]keptMessage, *telemetryMark, []int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.parts) == 0 {
		b.parts = make([]partitionState, eventhub.DefaultPartitions)
	}
	next := make([]int64, len(b.parts))
	for i, p := range b.parts {
		next[i] = p.next
	}
	seq := b.seq
	kms := make([]keptMessage, len(msgs))
	for i, m := range msgs {
		seq++
		m.SequenceNumber = seq
		km := keptMessage{Message: m, size: size(m)}
		km.partition = eventhub.PartitionOf(m.DeviceID, len(next))
		km.partSeq = next[km.partition]
		next[km.partition]++
		kms[i] = km
	}
	var mark *telemetryMark
	short := seq > reserved.Sequence || len(reserved.Partitions) != len(next)
	for i := 0; !short && i < len(next); i++ {
		short = next[i] > reserved.Partitions[i].Next
	}
	if short {
		mark = &telemetryMark{Sequence: max(seq, reserved.Sequence) + reserveBlock, Partitions: make([]partitionMark, len(next))}
		for i, n := range next {
			r := n
			if i < len(reserved.Partitions) {
				r = max(r, reserved.Partitions[i].Next)
			}
			mark.Partitions[i] = partitionMark{Next: r + reserveBlock}
		}
	}
	deletes := b.dropped[:min(len(b.dropped), maxLogDeletes)]
	return kms, mark, append([]int64(nil), deletes...)
}

// used is the mark of the numbers given so far.
func (b *messageBuffer) used() telemetryMark {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := telemetryMark{Sequence: b.seq, Partitions: make([]partitionMark, len(b.parts))}
	for i, p := range b.parts {
		m.Partitions[i] = partitionMark{Next: p.next, LastOffset: p.lastOffset, LastTime: p.lastTime}
	}
	return m
}

// commit shows messages prepare numbered, now that they are stored, and
// forgets the first deleted dropped messages, whose records are gone.
func (b *messageBuffer) commit(kms []keptMessage, deleted int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropped = b.dropped[min(deleted, len(b.dropped)):]
	if len(b.dropped) == 0 {
		b.dropped = nil
	}
	for _, km := range kms {
		st := &b.parts[km.partition]
		st.next = km.partSeq + 1
		st.lastOffset, st.lastTime = km.SequenceNumber, km.EnqueuedTime
		b.seq = km.SequenceNumber
		b.msgs = append(b.msgs, km)
		b.bytes += km.size
	}
	b.trim()
	close(b.added)
	b.added = make(chan struct{})
}

// forgetDropped stops deleting a record another node deleted.
func (b *messageBuffer) forgetDropped(seq int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, s := range b.dropped {
		if s == seq {
			b.dropped = append(b.dropped[:i], b.dropped[i+1:]...)
			return
		}
	}
}

// advance moves the numbering past what mark records.
func (b *messageBuffer) advance(mark telemetryMark) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq = max(b.seq, mark.Sequence)
	if len(mark.Partitions) != len(b.parts) {
		return
	}
	for i, p := range mark.Partitions {
		if p.Next > b.parts[i].next {
			b.parts[i] = partitionState{next: p.Next, lastOffset: p.LastOffset, lastTime: p.LastTime}
		}
	}
}

// load restores the telemetry the store keeps, within the buffer's
// bounds, with its sequence numbers in the hub and in its Event Hubs
// partitions. Records past the bounds are deleted with the next write.
func (l *telemetryLog) load(ctx context.Context) error {
	b := l.b
	var mark telemetryMark
	rec, err := l.st.Get(ctx, KindTelemetry, l.hub)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return fmt.Errorf("read telemetry mark: %w", err)
	default:
		if err := json.Unmarshal(rec.Data, &mark); err != nil {
			l.log.Warn("telemetry mark unreadable; numbering from the messages kept", "err", err)
			mark = telemetryMark{}
		}
		l.markTag, l.reserved = rec.ETag, mark
	}
	var kms []keptMessage
	opt := store.ListOptions{Ref: l.hub, Limit: 1000}
	for {
		recs, more, err := l.st.List(ctx, KindTelemetry, opt)
		if err != nil {
			return fmt.Errorf("read telemetry: %w", err)
		}
		for _, r := range recs {
			if !strings.Contains(r.ID, "/") {
				continue // the mark
			}
			var sm storedMessage
			if err := json.Unmarshal(r.Data, &sm); err != nil {
				l.log.Warn("telemetry record unreadable; skipped", "id", r.ID, "err", err)
				continue
			}
			kms = append(kms, keptMessage{Message: sm.Message, size: size(sm.Message), partition: sm.Partition, partSeq: sm.PartitionSequence})
		}
		if !more || len(recs) == 0 {
			break
		}
		opt.After = recs[len(recs)-1].ID
	}

	b.mu.Lock()
	samePartitions := len(mark.Partitions) == len(b.parts)
	if samePartitions {
		for i, p := range mark.Partitions {
			b.parts[i] = partitionState{next: p.Next, lastOffset: p.LastOffset, lastTime: p.LastTime}
		}
	} else if mark.Sequence > 0 {
		l.log.Info("the Event Hubs-compatible endpoint's partition count changed; its sequence numbers start over", "hub", l.hub)
	}
	for _, km := range kms {
		if !samePartitions || km.partition >= len(b.parts) {
			b.place(&km)
		}
		b.msgs = append(b.msgs, km)
		b.bytes += km.size
		b.seq = max(b.seq, km.SequenceNumber)
		st := &b.parts[km.partition]
		st.next = max(st.next, km.partSeq+1)
		st.lastOffset, st.lastTime = km.SequenceNumber, km.EnqueuedTime
	}
	// Numbers reserved may have been given to messages since dropped,
	// or lost with a crash: numbering goes on after them.
	b.seq = max(b.seq, mark.Sequence)
	b.trim()
	legacy := mark.Messages
	b.mu.Unlock()

	if len(legacy) > 0 {
		// Kept by an older dpsd at its last stop: stored as records now,
		// numbered as they were.
		if err := l.importLegacy(ctx, legacy); err != nil {
			return err
		}
	}
	return nil
}

// importLegacy stores the messages an older dpsd kept in the mark, after
// those already loaded, and rewrites the mark without them.
func (l *telemetryLog) importLegacy(ctx context.Context, msgs []Message) error {
	b := l.b
	b.mu.Lock()
	var kms []keptMessage
	for _, m := range msgs {
		km := keptMessage{Message: m, size: size(m)}
		b.place(&km)
		kms = append(kms, km)
		b.seq = max(b.seq, m.SequenceNumber)
	}
	parts := make([]partitionMark, len(b.parts))
	for i, p := range b.parts {
		parts[i] = partitionMark{Next: p.next, LastOffset: p.lastOffset, LastTime: p.lastTime}
	}
	mark := telemetryMark{Sequence: b.seq, Partitions: parts}
	b.mu.Unlock()
	writes := make([]store.Write, 0, len(kms)+1)
	for _, km := range kms {
		data, err := json.Marshal(storedMessage{Message: km.Message, Partition: km.partition, PartitionSequence: km.partSeq})
		if err != nil {
			return err
		}
		writes = append(writes, store.Write{Record: store.Record{Kind: KindTelemetry, ID: telemetryID(l.hub, km.SequenceNumber), Ref: l.hub, Data: data}})
	}
	data, err := json.Marshal(mark)
	if err != nil {
		return err
	}
	writes = append(writes, store.Write{Record: store.Record{Kind: KindTelemetry, ID: l.hub, Ref: l.hub, Data: data}, Cond: store.Condition{IfMatch: l.markTag}})
	recs, err := apply(ctx, l.st, writes)
	if err != nil {
		return fmt.Errorf("store the telemetry kept at the last stop: %w", err)
	}
	l.markTag, l.reserved = recs[len(recs)-1].ETag, mark
	b.mu.Lock()
	for _, km := range kms {
		b.msgs = append(b.msgs, km)
		b.bytes += km.size
	}
	b.trim()
	b.mu.Unlock()
	return nil
}
