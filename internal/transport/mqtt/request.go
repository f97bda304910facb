package mqtt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/jsonlimit"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/refusal"
)

// dispatch starts one request. It runs on the connection's read loop after
// the PUBACK was written, so it only claims a slot and starts a goroutine:
// the engine may take seconds (custom allocation webhooks), and a blocked
// read loop would stop PINGREQs and PUBACKs from being answered.
func (s *Server) dispatch(sess *session, rt requestTopic, body []byte) {
	select {
	case sess.slots <- struct{}{}:
	default:
		e := dps.Errorf(dps.CodeThrottled, "Too many requests in flight on this connection.")
		e.RetryAfter = busyRetryAfter
		s.respondError(sess, rt, e, nil)
		return
	}

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		<-sess.slots
		e := dps.Errorf(dps.CodeServiceUnavailable, "The service is shutting down.")
		e.RetryAfter = busyRetryAfter
		s.respondError(sess, rt, e, nil)
		return
	}
	s.requests.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.requests.Done()
		defer func() { <-sess.slots }()
		s.handle(sess, rt, body)
	}()
}

// handle asks the engine and writes its answer to the device.
func (s *Server) handle(sess *session, rt requestTopic, body []byte) {
	start := time.Now()
	log := sess.log.With("op", rt.kind.String(), "rid", rt.rid)
	defer func() {
		// A bug in the engine must cost one request, not the process.
		if v := recover(); v != nil {
			log.Error("panic handling mqtt request", "panic", v)
			s.respondError(sess, rt, fmt.Errorf("panic: %v", v), log)
		}
	}()

	req := provision.Request{
		IDScope:          sess.user.IDScope,
		RegistrationID:   sess.user.RegistrationID,
		SASToken:         sess.sasToken,
		PeerCertificates: sess.peerCerts,
		APIVersion:       sess.user.APIVersion,
		RemoteAddr:       sess.remoteAddr,
		Transport:        sess.transport,
	}

	var (
		res    provision.Result
		err    error
		status int
	)
	switch rt.kind {
	case kindRegister:
		req.Payload, req.CSR, err = registerPayload(body)
		if err != nil {
			s.respondError(sess, rt, dps.Errorf(dps.CodeBadRequest, "Invalid request body: %v.", err), log)
			return
		}
		res, err = s.prov.Register(sess.ctx, req)
		// Register always answers 202, even when the engine finished at
		// once: C# and IoT Edge treat anything else as an error.
		status = http.StatusAccepted
	case kindOperationStatus:
		// The body is ignored: Node and Python send " ", C# nothing, and
		// the C SDK the register JSON again.
		log = log.With("operationId", rt.operationID)
		res, err = s.prov.OperationStatus(sess.ctx, req, rt.operationID)
		status = http.StatusOK
		if res.Operation != nil && !dps.Terminal(res.Operation.Status) {
			status = http.StatusAccepted
		}
	}
	if err == nil && res.Operation == nil {
		err = fmt.Errorf("engine returned no operation for %s", rt.kind)
	}
	if err != nil {
		s.respondError(sess, rt, err, log)
		return
	}

	payload, err := json.Marshal(res.Operation)
	if err != nil {
		s.respondError(sess, rt, fmt.Errorf("encode operation: %w", err), log)
		return
	}
	// 202 always carries retry-after (0 when the engine wants an immediate
	// poll); a terminal 200 never does.
	topic := responseTopic(status, rt.rid, res.RetryAfter, status == http.StatusAccepted)
	sess.answered.Store(true)
	if err := s.publish(sess, topic, payload); err != nil {
		log.Debug("mqtt response not delivered", "err", err)
		return
	}
	log.Debug("mqtt request answered", "status", status, "opStatus", res.Operation.Status,
		"duration", time.Since(start))
}

// registerPayload extracts the custom payload and the csr from a register body. The
// body may be empty (C#), " " or the DeviceRegistration JSON with the
// payload null (Python); the registration id in it is ignored in favour of
// the CONNECT user name.
func registerPayload(body []byte) (payload json.RawMessage, csr string, err error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, "", nil
	}
	if err := jsonlimit.Check(body); err != nil {
		return nil, "", err
	}
	var reg dps.DeviceRegistration
	if err := json.Unmarshal(body, &reg); err != nil {
		return nil, "", err
	}
	if p := bytes.TrimSpace(reg.Payload); len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return nil, reg.CSR, nil
	}
	return reg.Payload, reg.CSR, nil
}

// respondError answers a request with the error body on
// $dps/registrations/res/{status}/. Errors that are not *dps.Error are
// logged (log may be nil to use the session's logger) and answered as an
// internal error without their text.
func (s *Server) respondError(sess *session, rt requestTopic, err error, log *slog.Logger) {
	if log == nil {
		log = sess.log.With("op", rt.kind.String(), "rid", rt.rid)
	}
	e, payload := httperr.Body(nil, log, err)
	status := e.Status()
	s.refusals.Record(sess.ctx, refusal.Request{
		Transport:      sess.transport,
		Operation:      rt.kind.String(),
		IDScope:        sess.user.IDScope,
		RegistrationID: sess.user.RegistrationID,
		RemoteAddr:     sess.remoteAddr,
	}, e, err)
	topic := responseTopic(status, rt.rid, e.RetryAfter, e.RetryAfter > 0)
	if err := s.publish(sess, topic, payload); err != nil {
		log.Debug("mqtt error response not delivered", "err", err)
	}
	if status == http.StatusUnauthorized || status == http.StatusTooManyRequests && !sess.answered.Load() {
		// DPS authenticates requests, not the CONNECT, so a wrong key is
		// known only now. A device with a wrong key has nothing more to
		// do here; without this it could hold the connection (keep-alive
		// 0) for as long as the idle bound, unauthenticated. A throttled
		// first request is the same: the throttle answers before the key
		// is checked, so a storm of wrong keys meets it instead of a 401.
		// A device already answered keeps its connection through a 429
		// (polling too fast), as the SDKs retry on it.
		sess.conn.Cut(s.unauthGrace)
	}
}

// publish writes a QoS 1 PUBLISH straight to the session's connection,
// bypassing the broker's subscription index: every device subscribes to the
// same filter, so a broker-wide publish would reach them all.
func (s *Server) publish(sess *session, topic string, payload []byte) error {
	cl := sess.cl
	id, err := cl.NextPacketID()
	if err != nil {
		return fmt.Errorf("no packet id: %w", err)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   topic,
		Payload:     payload,
		PacketID:    uint16(id),
		Created:     time.Now().Unix(),
	}
	// Registering the packet as in flight keeps its id reserved until the
	// device's PUBACK, which the broker then matches and clears.
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&s.broker.Info.Inflight, 1)
	}
	if err := cl.WritePacket(pk); err != nil {
		if cl.State.Inflight.Delete(pk.PacketID) {
			atomic.AddInt64(&s.broker.Info.Inflight, -1)
		}
		return fmt.Errorf("write publish: %w", err)
	}
	return nil
}
