package linkedhub

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/sas"
)

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request; an error (a *dps.Error
	// for a specific code, 401000 otherwise) is answered as is. GET requests
	// only read; the lead decides which right each method needs (Azure puts
	// linked hubs under ServiceConfig).
	Authorize func(*http.Request) error
	// Health, when set, gives a hub's health for the answers of GET.
	Health func(host string) *admin.LinkedHubHealth
	// Probe checks a rotated key before rotateKey saves it; nil saves
	// without a check.
	Probe  KeyProbe
	Logger *slog.Logger
}

// maxBodyBytes bounds a request body: a definition is a few hundred
// bytes, plus a CA bundle of at most MaxCABytes.
const maxBodyBytes = MaxCABytes + 16<<10

// Handler serves the dpsd extension API for linked hubs:
//
//	GET    .../linkedHubs          list (connection strings redacted)
//	POST   .../linkedHubs          link a hub: Definition → 201 Hub
//	GET    .../linkedHubs/{name}   one hub
//	PATCH  .../linkedHubs/{name}   update: Definition → 200 Hub (If-Match optional)
//	PUT    .../linkedHubs/{name}   link or update (name must match the connection string)
//	DELETE .../linkedHubs/{name}   unlink → 204 (If-Match optional)
//	POST   .../linkedHubs/{name}/rotateKey   new key: LinkedHubKeyRotation → 200 Hub
//
// It finds the "linkedHubs" path segment wherever the handler is mounted
// (dpsd mounts it at /dpsd/linkedHubs). Bodies and answers are JSON; errors
// have the Azure error shape.
func (r *Registry) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &handler{reg: r, opt: opt}
}

type handler struct {
	reg *Registry
	opt HandlerOptions
}

func (h *handler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !httperr.Authorized(w, req, h.opt.Authorize) {
		return
	}
	name, hasName, action, ok := hubName(req.URL)
	if !ok {
		httperr.Write(w, req, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", req.URL.Path))
		return
	}
	ctx := req.Context()
	var (
		status = http.StatusOK
		out    any
		err    error
	)
	switch {
	case action != "" && req.Method == http.MethodPost:
		var rot admin.LinkedHubKeyRotation
		if err = httperr.DecodeBody(req, &rot, maxBodyBytes, true, "a valid key rotation ({\"connectionString\": ...})"); err == nil {
			var hub *Hub
			if hub, err = h.reg.RotateKey(ctx, name, rot, req.Header.Get("If-Match"), h.opt.Probe); err == nil {
				out = h.view(hub)
				h.opt.Logger.Info("linked hub key rotated", "hub", hub.Name, "checked", !rot.SkipCheck && h.opt.Probe != nil)
			}
		}
	case action != "":
		err = dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", req.Method, req.URL.Path)
	case !hasName && req.Method == http.MethodGet:
		var hubs []*Hub
		hubs, err = h.reg.List(ctx)
		list := make([]*Hub, 0, len(hubs))
		for _, hub := range hubs {
			list = append(list, h.view(hub))
		}
		out = list
	case !hasName && req.Method == http.MethodPost:
		var def Definition
		if err = httperr.DecodeBody(req, &def, maxBodyBytes, true, "a valid linked hub definition"); err == nil {
			var hub *Hub
			if hub, err = h.reg.Create(ctx, def); err == nil {
				status, out = http.StatusCreated, h.view(hub)
				h.opt.Logger.Info("linked hub created", "hub", hub.Name, "weight", hub.AllocationWeight, "applyAllocationPolicy", hub.ApplyAllocationPolicy)
			}
		}
	case hasName && req.Method == http.MethodGet:
		var hub *Hub
		if hub, err = h.reg.Get(ctx, name); err == nil {
			out = h.view(hub)
		}
	case hasName && (req.Method == http.MethodPatch || req.Method == http.MethodPut):
		var def Definition
		if err = httperr.DecodeBody(req, &def, maxBodyBytes, true, "a valid linked hub definition"); err == nil {
			out, status, err = h.update(req, name, def)
		}
	case hasName && req.Method == http.MethodDelete:
		if err = h.reg.Delete(ctx, name, req.Header.Get("If-Match")); err == nil {
			h.opt.Logger.Info("linked hub deleted", "hub", name)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	default:
		err = dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", req.Method, req.URL.Path)
	}
	if err != nil {
		httperr.Write(w, req, h.opt.Logger, apiError(err))
		return
	}
	if hub, ok := out.(*Hub); ok && hub.ETag != "" {
		w.Header().Set("ETag", hub.ETag)
	}
	httperr.WriteJSON(w, status, out)
}

// view is a hub as GET answers it: redacted, with its health.
func (h *handler) view(hub *Hub) *Hub {
	v := Redacted(hub)
	if h.opt.Health != nil {
		v.Health = h.opt.Health(hub.Name)
	}
	return v
}

// update handles PATCH and PUT of one hub.
func (h *handler) update(req *http.Request, name string, def Definition) (any, int, error) {
	ctx := req.Context()
	if req.Method == http.MethodPut {
		if def.ConnectionString == "" {
			return nil, 0, dps.Errorf(dps.CodeInvalidArgument, "The connectionString of the IoT hub is required.")
		}
		if cs, err := sas.ParseConnectionString(def.ConnectionString); err == nil && !strings.EqualFold(cs.HostName, name) {
			return nil, 0, dps.Errorf(dps.CodeInvalidArgument, "The connection string names host %s, not %s.", cs.HostName, name)
		}
		hub, created, err := h.reg.Upsert(ctx, name, def, req.Header.Get("If-Match"))
		if err != nil {
			return nil, 0, err
		}
		if created {
			h.opt.Logger.Info("linked hub created", "hub", hub.Name)
			return h.view(hub), http.StatusCreated, nil
		}
		h.opt.Logger.Info("linked hub updated", "hub", hub.Name, "weight", hub.AllocationWeight, "applyAllocationPolicy", hub.ApplyAllocationPolicy)
		return h.view(hub), http.StatusOK, nil
	}
	hub, err := h.reg.Update(ctx, name, def, req.Header.Get("If-Match"))
	if err != nil {
		return nil, 0, err
	}
	h.opt.Logger.Info("linked hub updated", "hub", hub.Name, "weight", hub.AllocationWeight, "applyAllocationPolicy", hub.ApplyAllocationPolicy)
	return h.view(hub), http.StatusOK, nil
}

// hubName finds the path segments after "linkedHubs": none (the
// collection), one (a hub name, unescaped) or two (a hub name and an
// action, "rotateKey").
func hubName(u *url.URL) (name string, hasName bool, action string, ok bool) {
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	for i, s := range segs {
		if !strings.EqualFold(s, "linkedHubs") {
			continue
		}
		rest := segs[i+1:]
		switch {
		case len(rest) == 0 || (len(rest) == 1 && rest[0] == ""):
			return "", false, "", true
		case len(rest) == 1 || (len(rest) == 2 && strings.EqualFold(rest[1], "rotateKey")):
			n, err := url.PathUnescape(rest[0])
			if err != nil || n == "" {
				return "", false, "", false
			}
			if len(rest) == 2 {
				action = "rotateKey"
			}
			return n, true, action, true
		}
		return "", false, "", false
	}
	return "", false, "", false
}

// apiError maps lookup errors to the answer a client sees; httperr.Write
// maps the rest.
func apiError(err error) error {
	if errors.Is(err, ErrNotFound) {
		var de *dps.Error
		errors.As(err, &de)
		return dps.Errorf(dps.CodeNotFound, "%s", de.Message)
	}
	return err
}
