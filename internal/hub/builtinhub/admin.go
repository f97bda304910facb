package builtinhub

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/jsonlimit"
)

// AdminPathPrefix is where dpsd serves the management API of its built-in
// hubs, a dpsd extension next to the DPS service API.
const AdminPathPrefix = "/dpsd/hubs"

// CreateRequest is the wire form of a create request, defined in api/admin.
type CreateRequest = admin.CreateHubRequest

// DeviceList is the answer of GET /dpsd/hubs/{name}/devices.
type DeviceList struct {
	Devices []*azurehub.Device `json:"devices"`
	// ContinuationToken, when set, is passed as ?after= for the next page.
	ContinuationToken string `json:"continuationToken,omitempty"`
}

// Handler returns the management API of the built-in hubs:
//
//	GET    /dpsd/hubs                            list hubs
//	PUT    /dpsd/hubs/{name}                     create (body CreateRequest)
//	GET    /dpsd/hubs/{name}                     show, with connection string
//	DELETE /dpsd/hubs/{name}                     delete with its devices
//	GET    /dpsd/hubs/{name}/devices?after=&top= list device identities
//	GET    /dpsd/hubs/{name}/devices/{id}        show a device identity
//	GET    /dpsd/hubs/{name}/devices/{id}/twin   show a device twin
//	GET    /dpsd/hubs/{name}/messages?deviceId=&after=&top=  telemetry received
//	       (&wait=N: a long poll, answered when a message comes or after N s;
//	       Accept: text/event-stream: follow it as server-sent events)
//	POST   /dpsd/hubs/{name}/devices/{id}/messages  send a cloud-to-device message
//	…      /dpsd/hubs/{name}/certificates[/{cert}[/verify]]  CA certificates (serveCertificates)
//
// Requests pass Options.Authorize first. Errors have the DPS error shape.
// The handler accepts paths with or without the prefix.
func (m *Manager) Handler() http.Handler { return http.HandlerFunc(m.serveAdmin) }

func (m *Manager) serveAdmin(w http.ResponseWriter, r *http.Request) {
	if !httperr.Authorized(w, r, m.opt.Authorize) {
		return
	}
	p := strings.TrimPrefix(r.URL.EscapedPath(), AdminPathPrefix)
	segs, err := pathSegments(p)
	if err != nil {
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "Malformed path."))
		return
	}
	ctx := r.Context()
	switch {
	case len(segs) == 0 && r.Method == http.MethodGet:
		list, err := m.List(ctx)
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, list)
	case len(segs) == 1 && r.Method == http.MethodPut:
		var req CreateRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err == nil && len(strings.TrimSpace(string(body))) > 0 {
			err = cmp.Or(jsonlimit.Check(body), json.Unmarshal(body, &req))
		}
		if err != nil {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "The body is not valid JSON: %v", err))
			return
		}
		in, err := m.Create(ctx, segs[0], CreateOptions(req))
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		httperr.WriteJSON(w, http.StatusCreated, in)
	case len(segs) == 1 && r.Method == http.MethodGet:
		in, err := m.Info(ctx, segs[0])
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, in)
	case len(segs) == 1 && r.Method == http.MethodDelete:
		if err := m.Delete(ctx, segs[0]); err != nil {
			m.adminError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case len(segs) >= 2 && segs[1] == "certificates":
		h, ok := m.Hub(segs[0])
		if !ok {
			m.adminError(w, r, m.hubNotRunning(r, segs[0]))
			return
		}
		m.serveCertificates(w, r, h, segs[2:])
	case len(segs) >= 2 && r.Method == http.MethodGet:
		h, ok := m.Hub(segs[0])
		if !ok {
			m.adminError(w, r, m.hubNotRunning(r, segs[0]))
			return
		}
		m.serveHubAdmin(w, r, h, segs[1:])
	case len(segs) == 4 && segs[1] == "devices" && segs[3] == "messages" && r.Method == http.MethodPost:
		h, ok := m.Hub(segs[0])
		if !ok {
			m.adminError(w, r, m.hubNotRunning(r, segs[0]))
			return
		}
		m.sendC2D(w, r, h, segs[2])
	default:
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s %s", r.Method, r.URL.Path))
	}
}

// maxWaitSeconds bounds a long poll for telemetry, below the clients'
// request timeout.
const maxWaitSeconds = 50

// streamMessages follows a hub's telemetry as server-sent events, one
// "message" event per message (its sequence number as the event id), with
// a comment line every 15 s to keep proxies from closing the stream. It
// ends when the client goes away.
func (m *Manager) streamMessages(w http.ResponseWriter, r *http.Request, h *Hub, deviceID string, after int64) {
	if id, err := strconv.ParseInt(r.Header.Get("Last-Event-ID"), 10, 64); err == nil && id > after {
		after = id
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeBadRequest, "Streaming is not supported on this connection."))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	ctx := r.Context()
	for {
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		msgs := h.WaitMessages(wctx, deviceID, after, 100)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if len(msgs) == 0 {
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
		}
		for _, msg := range msgs {
			data, err := json.Marshal(msg)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: message\ndata: %s\n\n", msg.SequenceNumber, data); err != nil {
				return
			}
			after = msg.SequenceNumber
		}
		fl.Flush()
	}
}

func (m *Manager) sendC2D(w http.ResponseWriter, r *http.Request, h *Hub, id string) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 2*MaxC2DBody+64<<10))
	var req C2DSend // the body of POST /dpsd/hubs/{name}/devices/{id}/messages
	if err == nil {
		err = cmp.Or(jsonlimit.Check(body), json.Unmarshal(body, &req))
	}
	if err != nil {
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "The body is not valid JSON: %v", err))
		return
	}
	msg := req.C2DMessage
	msg.Body = []byte(req.Body)
	if req.BodyEncoding == "base64" {
		if msg.Body, err = base64.StdEncoding.DecodeString(req.Body); err != nil {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "The body is not base64: %v", err))
			return
		}
	}
	if err := h.SendC2D(r.Context(), id, &msg); err != nil {
		m.adminError(w, r, err)
		return
	}
	httperr.WriteJSON(w, http.StatusAccepted, map[string]string{"messageId": msg.MessageID})
}

func (m *Manager) hubNotRunning(r *http.Request, name string) error {
	if _, err := m.Info(r.Context(), name); err != nil {
		return err
	}
	return dps.Errorf(dps.CodeServiceUnavailable, "Hub %s is not running on this node.", name)
}

func (m *Manager) serveHubAdmin(w http.ResponseWriter, r *http.Request, h *Hub, segs []string) {
	ctx := r.Context()
	q := r.URL.Query()
	top, _ := strconv.Atoi(q.Get("top"))
	switch {
	case len(segs) == 1 && segs[0] == "devices":
		devs, more, err := h.ListDevices(ctx, q.Get("after"), min(max(top, 0), 1000))
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		out := DeviceList{Devices: devs}
		if out.Devices == nil {
			out.Devices = []*azurehub.Device{}
		}
		if more && len(devs) > 0 {
			out.ContinuationToken = devs[len(devs)-1].DeviceID
		}
		httperr.WriteJSON(w, http.StatusOK, out)
	case len(segs) == 2 && segs[0] == "devices":
		d, err := h.GetDevice(ctx, segs[1])
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, d)
	case len(segs) == 3 && segs[0] == "devices" && segs[2] == "twin":
		t, err := h.GetTwin(ctx, segs[1])
		if err != nil {
			m.adminError(w, r, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, t)
	case len(segs) == 1 && segs[0] == "messages" && strings.Contains(r.Header.Get("Accept"), "text/event-stream"):
		after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
		m.streamMessages(w, r, h, q.Get("deviceId"), after)
	case len(segs) == 1 && segs[0] == "messages":
		after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
		if wait, _ := strconv.Atoi(q.Get("wait")); wait > 0 {
			// A long poll: answer when a message comes, or after wait
			// seconds with none.
			ctx, cancel := context.WithTimeout(ctx, time.Duration(min(wait, maxWaitSeconds))*time.Second)
			defer cancel()
			httperr.WriteJSON(w, http.StatusOK, h.WaitMessages(ctx, q.Get("deviceId"), after, top))
			return
		}
		httperr.WriteJSON(w, http.StatusOK, h.Messages(q.Get("deviceId"), after, top))
	default:
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s %s", r.Method, r.URL.Path))
	}
}

// adminError answers err with the DPS error shape. Storage and other
// internal failures go to httperr.Write, which hides their text from
// clients and logs it with the tracking id the client gets.
func (m *Manager) adminError(w http.ResponseWriter, r *http.Request, err error) {
	var de *dps.Error
	var he *azurehub.Error
	var sf *storeFailure
	switch {
	case errors.As(err, &de):
	case errors.As(err, &sf):
		httperr.Write(w, r, m.log, sf.err)
		return
	case errors.Is(err, ErrHubNotFound):
		de = dps.Errorf(dps.CodeNotFound, "%v", err)
	case errors.Is(err, ErrHubExists):
		de = dps.Errorf(dps.CodeConflict, "%v", err)
	case errors.Is(err, ErrInvalid):
		de = dps.Errorf(dps.CodeInvalidArgument, "%v", err)
	case errors.As(err, &he):
		de = dps.Errorf(he.StatusCode*1000, "%s", he.Message)
	default:
		httperr.Write(w, r, m.log, err)
		return
	}
	httperr.Write(w, r, nil, de)
}
