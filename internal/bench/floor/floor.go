// Package floor is the do-nothing provisioning service that "dpsd bench
// --floor" measures dpsd against: dpsd's own device transports (HTTPS,
// MQTT and AMQP, over TLS and WebSockets) in front of an engine that checks
// the device's SAS token against one enrollment group's derived key and
// answers "assigned" at once, storing nothing and calling no hub.
//
// The framing and the answers are dpsd's exactly, since the transports are
// the same code: what separates dpsd from the floor is what a registration
// does (throttles, the store, allocation, the hub), which is what the
// comparison is meant to show.
package floor

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
	amqptransport "github.com/dpsd/dpsd/internal/transport/amqp"
	"github.com/dpsd/dpsd/internal/transport/https"
	"github.com/dpsd/dpsd/internal/transport/mqtt"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// Options configure a floor server.
type Options struct {
	// IP is the loopback address the listeners bind, on ports the system
	// picks.
	IP string
	// TLS holds the server certificate; use the target's, so the TLS work
	// is the same.
	TLS *tls.Config
	// IDScope and GroupKey are those of the enrollment group the load uses.
	IDScope  string
	GroupKey []byte
	// Hub is the hub every device is told it is assigned to.
	Hub string
	// PollFirst answers every register "assigning" and the poll
	// "assigned", as dpsd serve --poll-first does.
	PollFirst bool
}

// Server is a running floor. Close it when done.
type Server struct {
	httpsL, mqttL, amqpL net.Listener
	web                  *http.Server
	mqtt                 *mqtt.Server
	amqp                 *amqptransport.Server
	errc                 chan error
}

// Start listens and serves until Close.
func Start(opt Options) (_ *Server, err error) {
	if opt.TLS == nil || opt.IDScope == "" || len(opt.GroupKey) == 0 {
		return nil, errors.New("floor: TLS, IDScope and GroupKey are required")
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := &engine{opt: opt}
	s := &Server{errc: make(chan error, 3)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, l := range []*net.Listener{&s.httpsL, &s.mqttL, &s.amqpL} {
		if *l, err = net.Listen("tcp", net.JoinHostPort(opt.IP, "0")); err != nil {
			return nil, fmt.Errorf("floor: listen: %w", err)
		}
	}
	if s.mqtt, err = mqtt.New(p, mqtt.Options{Logger: quiet, TLSConfig: opt.TLS}); err != nil {
		return nil, fmt.Errorf("floor: mqtt: %w", err)
	}
	if s.amqp, err = amqptransport.New(p, amqptransport.Options{Logger: quiet, TLSConfig: opt.TLS}); err != nil {
		return nil, fmt.Errorf("floor: amqp: %w", err)
	}
	dev := https.New(p, https.Options{Logger: quiet})
	s.web = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if mqtt.IsWebSocketUpgrade(r) {
				if wsconn.Offers(r, amqptransport.WebSocketSubprotocol) {
					s.amqp.WebSocketHandler().ServeHTTP(w, r)
					return
				}
				s.mqtt.WebSocketHandler().ServeHTTP(w, r)
				return
			}
			dev.ServeHTTP(w, r)
		}),
		TLSConfig:         opt.TLS,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(quiet.Handler(), slog.LevelDebug),
	}
	go func() { s.errc <- s.web.Serve(tls.NewListener(s.httpsL, opt.TLS)) }()
	go func() { s.errc <- s.mqtt.Serve(s.mqttL) }()
	go func() { s.errc <- s.amqp.Serve(s.amqpL) }()
	return s, nil
}

// HTTPSAddr is the address of the device API and of MQTT and AMQP over
// WebSockets.
func (s *Server) HTTPSAddr() string { return s.httpsL.Addr().String() }

// MQTTAddr is the address of MQTT over TLS.
func (s *Server) MQTTAddr() string { return s.mqttL.Addr().String() }

// AMQPAddr is the address of AMQP over TLS.
func (s *Server) AMQPAddr() string { return s.amqpL.Addr().String() }

// Close stops the listeners and ends the connections.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if s.web != nil {
		errs = append(errs, s.web.Shutdown(ctx))
	} else if s.httpsL != nil {
		errs = append(errs, s.httpsL.Close())
	}
	if s.mqtt != nil {
		errs = append(errs, s.mqtt.Close(ctx))
	} else if s.mqttL != nil {
		errs = append(errs, s.mqttL.Close())
	}
	if s.amqp != nil {
		errs = append(errs, s.amqp.Close(ctx))
	} else if s.amqpL != nil {
		errs = append(errs, s.amqpL.Close())
	}
	return errors.Join(errs...)
}

// engine answers like dpsd's engine for a device of one group that is
// assigned at once, and does nothing else.
type engine struct{ opt Options }

func (e *engine) Register(_ context.Context, req provision.Request) (provision.Result, error) {
	if err := e.check(req); err != nil {
		return provision.Result{}, err
	}
	opID := newOperationID()
	if e.opt.PollFirst {
		return provision.Result{Operation: &dps.RegistrationOperationStatus{
			OperationID:       opID,
			Status:            dps.StatusAssigning,
			RegistrationState: &dps.DeviceRegistrationState{RegistrationID: req.RegistrationID, Status: dps.StatusAssigning},
		}}, nil
	}
	return e.assigned(req, opID), nil
}

func (e *engine) OperationStatus(_ context.Context, req provision.Request, operationID string) (provision.Result, error) {
	if err := e.check(req); err != nil {
		return provision.Result{}, err
	}
	return e.assigned(req, operationID), nil
}

func (e *engine) Status(_ context.Context, req provision.Request) (*dps.DeviceRegistrationState, error) {
	if err := e.check(req); err != nil {
		return nil, err
	}
	return e.assigned(req, "").Operation.RegistrationState, nil
}

// check is the whole proof: the token's audience, expiry and signature
// with the key derived from the group's.
func (e *engine) check(req provision.Request) error {
	if !strings.EqualFold(req.IDScope, e.opt.IDScope) {
		return dps.Errorf(dps.CodeIDScopeNotFound, "ID scope %q not found.", req.IDScope)
	}
	unauthorized := dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
	tok, err := sas.Parse(req.SASToken)
	if err != nil {
		return unauthorized
	}
	aud, err := tok.DecodedResource()
	if err != nil || !strings.EqualFold(aud, req.IDScope+"/registrations/"+req.RegistrationID) || tok.ExpiredAt(time.Now()) {
		return unauthorized
	}
	if !tok.Verify(sas.DeriveKeyBytes(e.opt.GroupKey, req.RegistrationID)) {
		return unauthorized
	}
	return nil
}

func (e *engine) assigned(req provision.Request, opID string) provision.Result {
	now := time.Now().UTC()
	return provision.Result{Operation: &dps.RegistrationOperationStatus{
		OperationID: opID,
		Status:      dps.StatusAssigned,
		RegistrationState: &dps.DeviceRegistrationState{
			RegistrationID:         req.RegistrationID,
			CreatedDateTimeUTC:     &now,
			AssignedHub:            e.opt.Hub,
			DeviceID:               req.RegistrationID,
			Status:                 dps.StatusAssigned,
			Substatus:              dps.SubstatusInitialAssignment,
			LastUpdatedDateTimeUTC: &now,
			ETag:                   newETag(),
		},
	}}
}

// newOperationID has the shape of dpsd's (and Azure's) operation ids.
func newOperationID() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return "4." + h[:16] + "." + h[16:24] + "-" + h[24:28] + "-" + h[28:32] + "-" + h[32:36] + "-" + h[36:48]
}

func newETag() string { return rand.Text() }
