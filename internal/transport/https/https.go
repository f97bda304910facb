package https

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/jsonlimit"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/refusal"
)

// Provisioner is the engine as this transport uses it.
type Provisioner interface {
	Register(ctx context.Context, req provision.Request) (provision.Result, error)
	OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error)
	Status(ctx context.Context, req provision.Request) (*dps.DeviceRegistrationState, error)
}

// MaxBodyBytes is Azure's largest device message (96 KB).
const MaxBodyBytes = 96 * 1024

// Handler serves the device API.
type Handler struct {
	p        Provisioner
	log      *slog.Logger
	refusals *refusal.Log
}

// Options configure the handler.
type Options struct {
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
	// Refusals logs and keeps every refused request; nil means a Log of
	// the transport's own over Logger.
	Refusals *refusal.Log
}

// New returns the device API handler.
func New(p Provisioner, opt Options) *Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Refusals == nil {
		opt.Refusals = refusal.New(refusal.Options{Logger: opt.Logger})
	}
	return &Handler{p: p, log: opt.Logger, refusals: opt.Refusals}
}

type route struct {
	scope, regID, opID string
	kind               string // "register", "operation", "status"
}

func parsePath(escaped string) (route, bool) {
	segs := strings.Split(strings.Trim(escaped, "/"), "/")
	if len(segs) < 3 || !strings.EqualFold(segs[1], "registrations") {
		return route{}, false
	}
	dec := make([]string, len(segs))
	for i, s := range segs {
		d, err := url.PathUnescape(s)
		if err != nil || d == "" {
			return route{}, false
		}
		dec[i] = d
	}
	r := route{scope: dec[0], regID: dec[2]}
	switch {
	case len(dec) == 3:
		r.kind = "status"
	case len(dec) == 4 && strings.EqualFold(dec[3], "register"):
		r.kind = "register"
	case len(dec) == 5 && strings.EqualFold(dec[3], "operations"):
		r.kind, r.opID = "operation", dec[4]
	default:
		return route{}, false
	}
	return r, true
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := parsePath(r.URL.EscapedPath())
	if !ok {
		h.writeErr(w, r, rt, dps.Errorf(dps.CodeNotFound, "No such device API path: %s", r.URL.Path))
		return
	}
	want := map[string]string{"register": http.MethodPut, "operation": http.MethodGet, "status": http.MethodPost}[rt.kind]
	if r.Method != want {
		w.Header().Set("Allow", want)
		h.writeErr(w, r, rt, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not allowed here; use %s.", r.Method, want))
		return
	}
	req := provision.Request{
		IDScope:        rt.scope,
		RegistrationID: rt.regID,
		SASToken:       r.Header.Get("Authorization"),
		APIVersion:     r.URL.Query().Get("api-version"),
		RemoteAddr:     r.RemoteAddr,
		Transport:      "https",
	}
	if r.TLS != nil {
		req.PeerCertificates = r.TLS.PeerCertificates
	}
	if req.APIVersion == "" {
		h.writeErr(w, r, rt, dps.Errorf(dps.CodeBadRequest, "The api-version query parameter is required."))
		return
	}

	body, err := readBody(w, r)
	if err != nil {
		h.writeErr(w, r, rt, err)
		return
	}
	ctx := r.Context()
	switch rt.kind {
	case "register":
		var reg dps.DeviceRegistration
		if err := decodeRegistration(body, &reg); err != nil {
			h.writeErr(w, r, rt, err)
			return
		}
		if reg.RegistrationID != "" && !strings.EqualFold(reg.RegistrationID, rt.regID) {
			h.writeErr(w, r, rt, dps.Errorf(dps.CodeInvalidArgument, "The body's registrationId %q does not match the path's %q.", reg.RegistrationID, rt.regID))
			return
		}
		req.Payload = reg.Payload
		req.TPM = reg.TPM
		req.CSR = reg.CSR
		res, err := h.p.Register(ctx, req)
		// A register is always answered 202: the C# SDK and IoT Edge
		// refuse any other success code, even with a final result.
		h.writeResult(w, r, rt, res, err, http.StatusAccepted)
	case "operation":
		res, err := h.p.OperationStatus(ctx, req, rt.opID)
		status := http.StatusOK
		if err == nil && res.Operation.Status == dps.StatusAssigning {
			status = http.StatusAccepted
		}
		h.writeResult(w, r, rt, res, err, status)
	case "status":
		st, err := h.p.Status(ctx, req)
		if err != nil {
			h.writeErr(w, r, rt, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, st)
	}
}

func (h *Handler) writeResult(w http.ResponseWriter, r *http.Request, rt route, res provision.Result, err error, status int) {
	if err != nil {
		h.writeErr(w, r, rt, err)
		return
	}
	if res.Operation.Status == dps.StatusAssigning {
		// Always present while assigning, even when zero: the device may
		// poll at once.
		w.Header().Set("Retry-After", httperr.RetryAfterSeconds(res.RetryAfter))
	}
	httperr.WriteJSON(w, status, res.Operation)
}

// writeErr answers a refused request and records the refusal, with the
// reason the device is not told.
func (h *Handler) writeErr(w http.ResponseWriter, r *http.Request, rt route, err error) {
	var ch *provision.TPMChallenge
	if errors.As(err, &ch) {
		writeTPMChallenge(w, r, ch)
		return
	}
	e := httperr.Write(w, r, h.log, err)
	h.refusals.Record(r.Context(), refusal.Request{
		Transport:      "https",
		Operation:      operations[rt.kind],
		IDScope:        rt.scope,
		RegistrationID: rt.regID,
		RemoteAddr:     r.RemoteAddr,
	}, e, err)
}

// operations names the routes as refusals name them.
var operations = map[string]string{"register": "register", "operation": "operationStatus", "status": "status"}

// tpmChallengeBody is the 401 a TPM device's unauthenticated register
// request gets: the error shape plus the activation blob. The SDKs read
// authenticationKey from the body of the 401 (Node
// azure-iot-provisioning-device-http getAuthenticationChallenge, C
// prov_transport_http_client); keyName is the SAS token's skn.
type tpmChallengeBody struct {
	dps.Error
	AuthenticationKey string `json:"authenticationKey"`
	KeyName           string `json:"keyName"`
}

func writeTPMChallenge(w http.ResponseWriter, r *http.Request, ch *provision.TPMChallenge) {
	e := httperr.Answer(r, nil, dps.Errorf(dps.CodeUnauthorized, "Unauthorized: activate the authenticationKey with the TPM and sign the SAS token with it."), "")
	e.TimestampUTC = time.Now().UTC()
	w.Header().Set(dps.HeaderErrorCode, strconv.Itoa(e.ErrorCode))
	httperr.WriteJSON(w, http.StatusUnauthorized, tpmChallengeBody{Error: *e, AuthenticationKey: ch.AuthenticationKey, KeyName: "registration"})
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, dps.Errorf(dps.CodeRequestEntityTooLarge, "The request body is larger than %d bytes.", MaxBodyBytes)
		}
		return nil, dps.Errorf(dps.CodeBadRequest, "Reading the request body failed: %v", err)
	}
	return body, nil
}

// decodeRegistration reads a register body. An empty body, a lone space or
// "null" mean no payload, as some SDKs send.
func decodeRegistration(body []byte, reg *dps.DeviceRegistration) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || string(body) == "null" {
		return nil
	}
	if err := jsonlimit.Check(body); err != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "The request body is not a valid registration: %v.", err)
	}
	if err := json.Unmarshal(body, reg); err != nil {
		return dps.Errorf(dps.CodeBadRequest, "The request body is not a valid registration: %v", err)
	}
	return nil
}
