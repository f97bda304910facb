package eventhub

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/sas"
)

// AMQP node names and CBS and management vocabulary.
const (
	cbsNode        = "$cbs"
	managementNode = "$management"
	opPutToken     = "put-token"
	opRead         = "READ"
	typeEventHub   = "com.microsoft:eventhub"
	typePartition  = "com.microsoft:partition"
	tokenTypeSAS   = "servicebus.windows.net:sastoken"
	// batch bounds the events read from the buffer at once.
	batch = 64
	// replyTimeout bounds a $cbs or $management answer waiting for the
	// client's credit.
	replyTimeout = 10 * time.Second
)

// Wrap returns a LinkHandler that serves the Event Hubs-compatible
// endpoint on c and passes every other link, message and token to base
// (the hub's own handler). amqpPort is the port of the AMQP over TLS
// listener, which a redirect names; 0 names the port c came in on, which
// is not that listener's when c is AMQP over WebSockets.
func Wrap(c *wire.Conn, base wire.LinkHandler, resolve Resolver, amqpPort int, log *slog.Logger) wire.LinkHandler {
	if log == nil {
		log = slog.Default()
	}
	return &links{base: base, resolve: resolve, conn: c, amqpPort: amqpPort, log: log, auth: map[string]time.Time{}, stops: map[*wire.Link]context.CancelFunc{}}
}

type links struct {
	base     wire.LinkHandler
	resolve  Resolver
	conn     *wire.Conn
	amqpPort int
	log      *slog.Logger

	mu     sync.Mutex
	cbsOut *wire.Link
	mgmt   []*wire.Link                      // $management reply links
	auth   map[string]time.Time              // token expiries by lower-cased entity name
	stops  map[*wire.Link]context.CancelFunc // receivers' pumps
	closed bool
}

// isEventHubAddress reports whether a link address is the endpoint's:
// the management node or {entity}/ConsumerGroups/….
func isEventHubAddress(addr string) bool {
	if addr == managementNode {
		return true
	}
	_, rest, ok := strings.Cut(addr, "/")
	return ok && !strings.HasPrefix(addr, "/") && strings.HasPrefix(strings.ToLower(rest), "consumergroups/")
}

func (l *links) Attach(k *wire.Link) error {
	switch {
	case k.Address == cbsNode:
		if !k.PeerIsSender {
			l.mu.Lock()
			l.cbsOut = k
			l.mu.Unlock()
		}
		return l.base.Attach(k)
	case k.Address == managementNode:
		if !k.PeerIsSender {
			l.mu.Lock()
			l.mgmt = append(l.mgmt, k)
			l.mu.Unlock()
		}
		return nil
	case isEventHubAddress(k.Address):
		return l.attachReceiver(k)
	case isRedirectAddress(k.Address):
		return l.redirect(k)
	}
	return l.base.Attach(k)
}

func (l *links) Message(ctx context.Context, d *wire.Delivery) {
	switch d.Link.Address {
	case cbsNode:
		if aud, _ := d.Message.ApplicationProperties["name"].(string); isEndpointAudience(aud) {
			l.putToken(ctx, d, aud)
			return
		}
	case managementNode:
		l.manage(ctx, d)
		return
	}
	if isEventHubAddress(d.Link.Address) {
		_ = d.Reject(&wire.Error{Condition: "amqp:not-allowed", Description: "the Event Hubs-compatible endpoint is read-only"})
		return
	}
	l.base.Message(ctx, d)
}

func (l *links) Detach(k *wire.Link) {
	l.mu.Lock()
	if stop, ok := l.stops[k]; ok {
		stop()
		delete(l.stops, k)
	}
	if l.cbsOut == k {
		l.cbsOut = nil
	}
	for i, m := range l.mgmt {
		if m == k {
			l.mgmt = append(l.mgmt[:i], l.mgmt[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	l.base.Detach(k)
}

func (l *links) Close(err error) {
	l.mu.Lock()
	l.closed = true
	for k, stop := range l.stops {
		stop()
		delete(l.stops, k)
	}
	l.mu.Unlock()
	l.base.Close(err)
}

// isEndpointAudience reports whether a put-token's audience is an
// Event Hubs one (sb://host/entity…) rather than an IoT hub's
// (host/devices/…, host).
func isEndpointAudience(aud string) bool {
	a := strings.ToLower(aud)
	return strings.HasPrefix(a, "sb://") || strings.HasPrefix(a, "amqps://")
}

// splitAudience parses sb://host[:port]/entity[/…].
func splitAudience(aud string) (host, entity string, err error) {
	_, rest, ok := strings.Cut(aud, "://")
	if !ok {
		return "", "", fmt.Errorf("audience %q is not an sb:// address", aud)
	}
	host, path, _ := strings.Cut(rest, "/")
	entity, _, _ = strings.Cut(path, "/")
	if host == "" || entity == "" {
		return "", "", fmt.Errorf("audience %q names no event hub: want sb://HOST/NAME", aud)
	}
	return host, entity, nil
}

// source resolves an audience to its hub.
func (l *links) source(aud string) (Source, error) {
	host, entity, err := splitAudience(aud)
	if err != nil {
		return nil, err
	}
	src := l.resolve(host, entity)
	if src == nil {
		return nil, fmt.Errorf("no built-in hub has the Event Hubs-compatible endpoint sb://%s/%s", host, entity)
	}
	return src, nil
}

// checkToken verifies a SAS token for aud: its own audience must be the
// same event hub (or a path under it), its policy one of the hub's with
// ServiceConnect.
func (l *links) checkToken(aud, token string) (Source, time.Time, error) {
	src, err := l.source(aud)
	if err != nil {
		return nil, time.Time{}, err
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	res, err := tok.DecodedResource()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	th, te, err := splitAudience(res)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("the SharedAccessSignature's resource: %w", err)
	}
	if other := l.resolve(th, te); other == nil || !strings.EqualFold(other.Name(), src.Name()) {
		return nil, time.Time{}, fmt.Errorf("the SharedAccessSignature is for %q, not event hub %s", res, src.Name())
	}
	exp, err := src.CheckToken(token)
	if err != nil {
		return nil, time.Time{}, err
	}
	return src, exp, nil
}

// putToken answers a $cbs put-token whose audience is the endpoint's.
func (l *links) putToken(ctx context.Context, d *wire.Delivery, aud string) {
	m := d.Message
	status, desc := 202, "Accepted"
	op, _ := m.ApplicationProperties["operation"].(string)
	typ, _ := m.ApplicationProperties["type"].(string)
	switch {
	case op != opPutToken:
		status, desc = 400, "unsupported operation "+op
	case typ != tokenTypeSAS:
		status, desc = 401, fmt.Sprintf("token type %q is not supported: use a shared access signature (%s)", typ, tokenTypeSAS)
	default:
		token, _ := bodyString(m)
		src, exp, err := l.checkToken(aud, token)
		if err != nil {
			status, desc = 401, err.Error()
			break
		}
		l.mu.Lock()
		name := strings.ToLower(src.Name())
		if exp.After(l.auth[name]) {
			l.auth[name] = exp
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	out := l.cbsOut
	l.mu.Unlock()
	if out == nil {
		_ = d.Accept()
		return
	}
	reply := &wire.Message{
		Properties:            wire.Properties{CorrelationID: m.Properties.MessageID, To: m.Properties.ReplyTo},
		ApplicationProperties: map[string]any{"status-code": int32(status), "status-description": desc},
	}
	sctx, cancel := context.WithTimeout(ctx, replyTimeout)
	defer cancel()
	if err := d.AcceptAndSend(sctx, out, reply); err != nil {
		l.log.Debug("event hub cbs reply failed", "err", err)
	}
}

// bodyString returns a token or request body sent as an amqp-value
// string or as data.
func bodyString(m *wire.Message) (string, bool) {
	if m.HasValue {
		if s, ok := m.Value.(string); ok {
			return s, true
		}
	}
	b := m.Body()
	return string(b), b != nil
}

// authorized reports whether a token for the event hub is in force on
// the connection.
func (l *links) authorized(src Source) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.auth[strings.ToLower(src.Name())])
}

// manage answers a $management request.
func (l *links) manage(ctx context.Context, d *wire.Delivery) {
	m := d.Message
	status, desc, body := l.answer(m)
	reply := &wire.Message{
		Properties: wire.Properties{CorrelationID: m.Properties.MessageID, To: m.Properties.ReplyTo},
		ApplicationProperties: map[string]any{
			"status-code": int32(status), "status-description": desc,
		},
	}
	if status >= 300 {
		reply.ApplicationProperties["error-condition"] = wire.Symbol(conditionOf(status))
	}
	if body != nil {
		reply.Value, reply.HasValue = body, true
	}
	l.mu.Lock()
	var out *wire.Link
	for _, k := range l.mgmt {
		if k.Name == m.Properties.ReplyTo {
			out = k
		}
	}
	if out == nil && len(l.mgmt) > 0 {
		out = l.mgmt[len(l.mgmt)-1]
	}
	l.mu.Unlock()
	if out == nil {
		_ = d.Reject(&wire.Error{Condition: "amqp:precondition-failed", Description: "attach a receiver on $management for the answers first"})
		return
	}
	sctx, cancel := context.WithTimeout(ctx, replyTimeout)
	defer cancel()
	if err := d.AcceptAndSend(sctx, out, reply); err != nil {
		l.log.Debug("event hub management reply failed", "err", err)
	}
}

func conditionOf(status int) string {
	switch status {
	case 400:
		return "amqp:invalid-field"
	case 401:
		return "amqp:unauthorized-access"
	case 404:
		return "amqp:not-found"
	}
	return "amqp:internal-error"
}

// answer computes the status and body of a management request.
func (l *links) answer(m *wire.Message) (int, string, any) {
	ap := m.ApplicationProperties
	op, _ := ap["operation"].(string)
	typ, _ := ap["type"].(string)
	name, _ := ap["name"].(string)
	if op != opRead {
		return 400, fmt.Sprintf("operation %q is not supported: only %s", op, opRead), nil
	}
	if name == "" {
		return 400, "the request names no event hub (application property name)", nil
	}
	host := l.conn.Hostname()
	var src Source
	if tok, _ := ap["security_token"].(string); tok != "" {
		s, _, err := l.checkTokenFor(name, tok)
		if err != nil {
			return 401, err.Error(), nil
		}
		src = s
	} else {
		src = l.byEntity(host, name)
		if src == nil {
			return 404, fmt.Sprintf("no event hub named %q here", name), nil
		}
		if !l.authorized(src) {
			return 401, "put a token for sb://HOST/" + name + " on $cbs, or send it as security_token", nil
		}
	}
	switch typ {
	case typeEventHub:
		n := src.Partitions()
		ids := make(wire.Array, n)
		for i := range ids {
			ids[i] = strconv.Itoa(i)
		}
		return 200, "OK", map[string]any{
			"name":            src.Name(),
			"type":            typeEventHub,
			"created_at":      src.CreatedAt().UTC(),
			"partition_count": int32(n),
			"partition_ids":   ids,
		}
	case typePartition:
		pid := wire.Text(ap["partition"])
		p, err := strconv.Atoi(pid)
		if err != nil || p < 0 || p >= src.Partitions() || pid != strconv.Itoa(p) {
			return 404, fmt.Sprintf("event hub %s has no partition %q (it has 0 to %d)", src.Name(), pid, src.Partitions()-1), nil
		}
		info := src.Partition(p)
		return 200, "OK", map[string]any{
			"name":                          src.Name(),
			"type":                          typePartition,
			"partition":                     pid,
			"begin_sequence_number":         info.BeginSequenceNumber,
			"last_enqueued_sequence_number": info.LastSequenceNumber,
			"last_enqueued_offset":          strconv.FormatInt(info.LastOffset, 10),
			"last_enqueued_time_utc":        info.LastEnqueuedTime.UTC(),
			"is_partition_empty":            info.Empty,
		}
	}
	return 400, fmt.Sprintf("type %q is not supported: %s or %s", typ, typeEventHub, typePartition), nil
}

// checkTokenFor checks a management request's security_token: its own
// audience says which endpoint; it must be the entity's.
func (l *links) checkTokenFor(entity, token string) (Source, time.Time, error) {
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	res, err := tok.DecodedResource()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	src, exp, err := l.checkToken(res, token)
	if err != nil {
		return nil, time.Time{}, err
	}
	if !strings.EqualFold(src.Name(), entity) {
		return nil, time.Time{}, fmt.Errorf("the SharedAccessSignature is for event hub %s, not %s", src.Name(), entity)
	}
	return src, exp, nil
}

// byEntity finds an entity by the connection's host name, or by its name
// alone for a connection that named no hub host (an address): a token
// verified by the hub's keys is needed all the same.
func (l *links) byEntity(host, entity string) Source {
	if src := l.resolve(host, entity); src != nil {
		return src
	}
	return l.resolve("", entity)
}

// parseReceiverAddress parses {entity}/ConsumerGroups/{group}/Partitions/{n}.
func parseReceiverAddress(addr string) (entity, group string, partition int, err error) {
	parts := strings.Split(addr, "/")
	if len(parts) != 5 || !strings.EqualFold(parts[1], "ConsumerGroups") || !strings.EqualFold(parts[3], "Partitions") || parts[0] == "" {
		return "", "", 0, fmt.Errorf("no such node %q: want NAME/ConsumerGroups/GROUP/Partitions/N", addr)
	}
	group, err = url.PathUnescape(parts[2])
	if err != nil {
		group = parts[2]
	}
	partition, err = strconv.Atoi(parts[4])
	if err != nil || parts[4] != strconv.Itoa(partition) {
		return "", "", 0, fmt.Errorf("no such node %q: partition %q is not a number", addr, parts[4])
	}
	return parts[0], group, partition, nil
}

// DefaultConsumerGroup is the one consumer group a hub's endpoint has.
const DefaultConsumerGroup = "$Default"

// attachReceiver starts the pump of a receiver link.
func (l *links) attachReceiver(k *wire.Link) error {
	if k.PeerIsSender {
		return &wire.Error{Condition: "amqp:not-allowed", Description: "the Event Hubs-compatible endpoint is read-only: telemetry comes from devices"}
	}
	entity, group, p, err := parseReceiverAddress(k.Address)
	if err != nil {
		return &wire.Error{Condition: "amqp:not-found", Description: err.Error()}
	}
	src := l.byEntity(l.conn.Hostname(), entity)
	switch {
	case src == nil:
		return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("no event hub named %q here", entity)}
	case !l.authorized(src):
		return &wire.Error{Condition: "amqp:unauthorized-access", Description: fmt.Sprintf("put a token for sb://HOST/%s on $cbs first", entity)}
	case !strings.EqualFold(group, DefaultConsumerGroup):
		return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("event hub %s has no consumer group %q: built-in hubs have only %s", src.Name(), group, DefaultConsumerGroup)}
	case p < 0 || p >= src.Partitions():
		return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("event hub %s has no partition %d (it has 0 to %d)", src.Name(), p, src.Partitions()-1)}
	}
	pos, err := filterPosition(k.Filter)
	if err != nil {
		return &wire.Error{Condition: "amqp:invalid-field", Description: err.Error()}
	}
	next := startSequence(src, p, pos)
	ctx, cancel := context.WithCancel(l.conn.Context())
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		cancel()
		return &wire.Error{Condition: "amqp:connection:forced", Description: "the connection is closing"}
	}
	l.stops[k] = cancel
	l.mu.Unlock()
	go l.pump(ctx, k, src, p, next)
	return nil
}

// filterPosition reads the selector filter of a receiver's source.
func filterPosition(f *wire.Map) (Position, error) {
	if f == nil {
		return Earliest, nil
	}
	for _, pr := range f.Pairs {
		var key string
		switch k := pr.Key.(type) {
		case wire.Symbol:
			key = string(k)
		case string:
			key = k
		}
		v := pr.Value
		if d, ok := v.(wire.Described); ok {
			switch code := d.Descriptor.(type) {
			case uint64:
				if code == SelectorFilterCode {
					key = SelectorFilter
				}
			case wire.Symbol:
				if string(code) == SelectorFilter {
					key = SelectorFilter
				}
			}
			v = d.Value
		}
		if key != SelectorFilter {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return Position{}, fmt.Errorf("the %s filter is a %T, not a string", SelectorFilter, v)
		}
		return ParseSelector(s)
	}
	return Earliest, nil
}

// startSequence returns the sequence number of the first event a receiver
// at pos gets: the first kept event the position selects, or the next
// event to come.
func startSequence(src Source, p int, pos Position) int64 {
	info := src.Partition(p)
	next := info.LastSequenceNumber + 1
	if pos.Latest {
		return next
	}
	if pos.Field == FieldSequenceNumber {
		if pos.Inclusive {
			return max(pos.Value, 0)
		}
		return pos.Value + 1
	}
	if (pos.Field == FieldOffset) && pos.Value < 0 {
		return 0
	}
	// Offsets and times: scan what the partition keeps.
	from := int64(0)
	for {
		evs, _ := src.Events(p, from, batch)
		if len(evs) == 0 {
			return next
		}
		for _, e := range evs {
			if selects(pos, e) {
				return e.SequenceNumber
			}
		}
		from = evs[len(evs)-1].SequenceNumber + 1
	}
}

func selects(pos Position, e Event) bool {
	var v int64
	switch pos.Field {
	case FieldOffset:
		v = e.Offset
	case FieldSequenceNumber:
		v = e.SequenceNumber
	case FieldEnqueuedTime:
		v = e.EnqueuedTime.UnixMilli()
	}
	if pos.Inclusive {
		return v >= pos.Value
	}
	return v > pos.Value
}

// pump sends a partition's events on a receiver link from sequence
// number next on, as the receiver grants credit, until the link ends.
func (l *links) pump(ctx context.Context, k *wire.Link, src Source, p int, next int64) {
	for {
		evs, changed := src.Events(p, next, batch)
		for _, e := range evs {
			if err := k.Send(ctx, eventMessage(e)); err != nil {
				if ctx.Err() == nil {
					l.log.Debug("event hub receiver ended", "link", k.Address, "err", err)
				}
				return
			}
			next = e.SequenceNumber + 1
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// eventMessage is an event as IoT Hub delivers it to Event Hubs
// consumers.
func eventMessage(e Event) *wire.Message {
	ann := map[wire.Symbol]any{
		"x-opt-sequence-number":       e.SequenceNumber,
		"x-opt-offset":                strconv.FormatInt(e.Offset, 10),
		"x-opt-enqueued-time":         e.EnqueuedTime.UTC(),
		"iothub-connection-device-id": e.DeviceID,
		"iothub-enqueuedtime":         e.EnqueuedTime.UTC(),
		"iothub-message-source":       "Telemetry",
	}
	if e.ModuleID != "" {
		ann["iothub-connection-module-id"] = e.ModuleID
	}
	for k, v := range e.Annotations {
		ann[wire.Symbol(k)] = v
	}
	m := &wire.Message{
		MessageAnnotations: ann,
		Properties: wire.Properties{
			ContentType:     wire.Symbol(e.ContentType),
			ContentEncoding: wire.Symbol(e.ContentEncoding),
		},
		Data: [][]byte{e.Body},
	}
	if e.MessageID != "" {
		m.Properties.MessageID = e.MessageID
	}
	if e.CorrelationID != "" {
		m.Properties.CorrelationID = e.CorrelationID
	}
	if e.UserID != "" {
		m.Properties.UserID = []byte(e.UserID)
	}
	if len(e.Properties) > 0 {
		m.ApplicationProperties = make(map[string]any, len(e.Properties))
		for k, v := range e.Properties {
			m.ApplicationProperties[k] = v
		}
	}
	return m
}
