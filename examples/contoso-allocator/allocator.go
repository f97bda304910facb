package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// The request and response types are written out here rather than imported
// from dpsd, so this file shows the whole webhook contract and can be copied
// into a service of your own. Only the members this policy reads are
// declared; the request also carries the enrollment (without its keys).

// allocationRequest is the body DPS (or dpsd) POSTs to the webhook.
type allocationRequest struct {
	DeviceRuntimeContext *struct {
		RegistrationID        string          `json:"registrationId"`
		CurrentIoTHubHostName string          `json:"currentIotHubHostName,omitempty"`
		Payload               json.RawMessage `json:"payload,omitempty"`
	} `json:"deviceRuntimeContext"`
	LinkedHubs []string `json:"linkedHubs"`
}

// allocationResponse is what the webhook answers with 200.
type allocationResponse struct {
	IoTHubHostName string       `json:"iotHubHostName"`
	InitialTwin    *initialTwin `json:"initialTwin,omitempty"`
}

type initialTwin struct {
	Tags       map[string]string `json:"tags"`
	Properties struct {
		Desired map[string]string `json:"desired"`
	} `json:"properties"`
}

// deviceKind is one kind of Contoso device: how to recognize its
// registration id, which hub it belongs in and its initial twin.
type deviceKind struct {
	idMarker  string // in the registration id
	hubMarker string // in the hub's host name
	name      string // for messages
	tags      map[string]string
	desired   map[string]string
}

// contosoKinds is the tutorial's policy.
var contosoKinds = []deviceKind{
	{
		idMarker: "-contoso-tstrsd-007", hubMarker: "-toasters-", name: "toasters",
		tags:    map[string]string{"deviceType": "toaster"},
		desired: map[string]string{"state": "ready", "darknessSetting": "medium"},
	},
	{
		idMarker: "-contoso-hpsd-088", hubMarker: "-heatpumps-", name: "heat pumps",
		tags:    map[string]string{"deviceType": "heatpump"},
		desired: map[string]string{"state": "on", "temperatureSetting": "65"},
	},
}

// maxRequestBytes bounds what the webhook reads; a real request is a few KiB.
const maxRequestBytes = 1 << 20

// allocator is the webhook's HTTP handler.
type allocator struct {
	log *slog.Logger
	// clientCN, when set, must be the common name of the TLS client
	// certificate (dpsd's ID scope, with dpsd serve --webhook-client-cert);
	// without it the webhook answers 401.
	clientCN string
	// code, when set, must be the request's "code" query parameter, as an
	// Azure Function with function-level authorization requires; without
	// it the webhook answers 401 (which DPS turns into error 400209).
	code string
	// secrets, when set, are the dpsd signing secrets accepted (the
	// current one, and the next during a rotation): a request not signed
	// with one of them is answered 401.
	secrets []string
}

func (a *allocator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.clientCN != "" {
		// The TLS layer verified the chain to dpsd's CA (--client-ca);
		// the common name says which dpsd instance it is: its ID scope.
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != a.clientCN {
			a.log.Info("refused: no client certificate of the expected dpsd instance", "remote", r.RemoteAddr)
			http.Error(w, "Unauthorized.", http.StatusUnauthorized)
			return
		}
	}
	log := a.log.With("method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
	if r.Method != http.MethodPost {
		log.Info("refused: not a POST")
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "Use POST.", http.StatusMethodNotAllowed)
		return
	}
	if a.code != "" && r.URL.Query().Get("code") != a.code {
		log.Info("refused: missing or wrong function key")
		http.Error(w, "Unauthorized.", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		log.Info("refused: unreadable body", "err", err)
		badRequest(w, "The request body could not be read.")
		return
	}
	if len(a.secrets) > 0 {
		var errs []error
		for _, s := range a.secrets {
			err := verifySignature(s, r.Header, body, time.Now())
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			log.Info("refused: signature", "err", errors.Join(errs...))
			http.Error(w, "Unauthorized.", http.StatusUnauthorized)
			return
		}
	}
	log.Info("allocation request", "webhookId", r.Header.Get("webhook-id"), "body", string(body))

	resp, problem := decide(body)
	if problem != "" {
		log.Info("allocation refused", "reason", problem)
		badRequest(w, problem)
		return
	}
	out, err := json.Marshal(resp)
	if err != nil {
		log.Error("encoding the answer failed", "err", err)
		http.Error(w, "Internal error.", http.StatusInternalServerError)
		return
	}
	log.Info("allocation answer", "hub", resp.IoTHubHostName, "body", string(out))
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

// decide applies the Contoso policy to a request body. It returns the
// answer, or the reason for a 400.
func decide(body []byte) (*allocationResponse, string) {
	var req allocationRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, "The request body is not an allocation request."
	}
	if req.DeviceRuntimeContext == nil || req.DeviceRuntimeContext.RegistrationID == "" {
		return nil, "Registration ID not provided for the device."
	}
	if len(req.LinkedHubs) == 0 {
		return nil, "No hub group defined for the enrollment."
	}
	regID := req.DeviceRuntimeContext.RegistrationID
	for _, k := range contosoKinds {
		if !strings.Contains(regID, k.idMarker) {
			continue
		}
		for _, hub := range req.LinkedHubs {
			if strings.Contains(hub, k.hubMarker) {
				t := &initialTwin{Tags: k.tags}
				t.Properties.Desired = k.desired
				return &allocationResponse{IoTHubHostName: hub, InitialTwin: t}, ""
			}
		}
		return nil, "No " + k.name + " hub found for the enrollment."
	}
	return nil, "Unrecognized device registration."
}

// badRequest answers 400 with the reason as a plain-text body.
func badRequest(w http.ResponseWriter, msg string) {
	http.Error(w, msg, http.StatusBadRequest)
}
