package builtinhub

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/jsonlimit"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// Store kinds of the built-in hubs.
const (
	KindHub     = store.KindHub        // hub configuration; id = hub name
	KindDevice  = store.KindHubDevice  // deviceDoc; id = hub/deviceId, Ref = hub name
	KindSession = store.KindHubSession // persistent MQTT session; id = hub/clientId, Ref = hub name
	KindC2D     = store.KindHubC2D     // a device's cloud-to-device queue; id = hub/deviceId, Ref = hub name
	KindModule  = store.KindHubModule  // deviceDoc of a module; id = hub/deviceId/moduleId, Ref = hub name
)

// deviceDoc is the stored state of one device of a built-in hub, or of
// one module of a device: its identity and its twin, kept together so one
// compare-and-swap covers both.
type deviceDoc struct {
	DeviceID          string                  `json:"deviceId"`
	ModuleID          string                  `json:"moduleId,omitempty"`
	ManagedBy         string                  `json:"managedBy,omitempty"`
	GenerationID      string                  `json:"generationId"`
	DeviceVersion     int64                   `json:"deviceVersion"`
	Status            string                  `json:"status"`
	StatusReason      *string                 `json:"statusReason,omitempty"`
	StatusUpdatedTime time.Time               `json:"statusUpdatedTime"`
	Auth              azurehub.Authentication `json:"authentication"`
	IoTEdge           bool                    `json:"iotEdge"`
	DeviceScope       string                  `json:"deviceScope,omitempty"`
	ParentScopes      []string                `json:"parentScopes,omitempty"`
	// VouchedCAs (PEM) are the CA certificates that vouched for a
	// certificateAuthority device when DPS registered it (ca.go).
	VouchedCAs  []string       `json:"vouchedCAs,omitempty"`
	ModelID     string         `json:"modelId,omitempty"`
	TwinVersion int64          `json:"twinVersion"`
	Tags        map[string]any `json:"tags"`
	Desired     section        `json:"desired"`
	Reported    section        `json:"reported"`

	etag string // the store record's etag, for compare-and-swap
}

func (d *deviceDoc) deviceETag() string {
	return base64.StdEncoding.EncodeToString([]byte(d.GenerationID + ":" + strconv.FormatInt(d.DeviceVersion, 10)))
}

func (d *deviceDoc) twinETag() string {
	return base64.StdEncoding.EncodeToString([]byte("twin:" + d.GenerationID + ":" + strconv.FormatInt(d.TwinVersion, 10)))
}

func deviceKey(hubName, id string) string { return hubName + "/" + id }

// twinID names a twin: a device's is its device id, a module's is
// "{deviceId}/{moduleId}" (device ids never hold '/'), which is also the
// module's MQTT client id.
func (d *deviceDoc) twinID() string {
	if d.ModuleID != "" {
		return d.DeviceID + "/" + d.ModuleID
	}
	return d.DeviceID
}

// decodeJSON decodes with numbers kept exact, as twins need.
func decodeJSON(data []byte, v any) error {
	if err := jsonlimit.Check(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}

// validDeviceID checks Azure IoT Hub's device id rules: up to 128 ASCII
// letters, digits and "-.+%_#*?!(),:=@$'". The ':' matters: DPS
// registration ids may hold it, and become device ids.
func validDeviceID(id string) error {
	if id == "" || len(id) > 128 {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device id must have 1 to 128 characters.")
	}
	for _, r := range id {
		ok := r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-.+%_#*?!(),:=@$'", r))
		if !ok {
			return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device id %q contains a character that is not allowed.", id)
		}
	}
	return nil
}

func notFound(id string) *azurehub.Error {
	return azurehub.Errorf(http.StatusNotFound, azurehub.CodeDeviceNotFound, "Device %s not registered", id)
}

func preconditionFailed(id string) *azurehub.Error {
	return azurehub.Errorf(http.StatusPreconditionFailed, azurehub.CodePreconditionFailed, "Precondition failed: the etag does not match the current version of device %s.", id)
}

// storeErr turns a storage failure into the hub error clients see: the
// store being unavailable as the 503 a client retries, anything else as a
// 500. Neither tells clients the store's error text; writeError and
// adminError log it with the request's tracking id.
func storeErr(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	he := azurehub.Errorf(http.StatusInternalServerError, azurehub.CodeServerError, "Internal error.")
	if errors.Is(err, store.ErrUnavailable) {
		he = &azurehub.Error{StatusCode: http.StatusServiceUnavailable, Code: azurehub.CodeServiceUnavailable, Message: "The hub's store is unavailable; try again later.", RetryAfter: httperr.UnavailableRetryAfter}
	}
	return &storeFailure{he: he, err: err}
}

// storeFailure is a storage failure: clients see he, logs see err.
// errors.As finds he, errors.Is matches err.
type storeFailure struct {
	he  *azurehub.Error
	err error
}

func (f *storeFailure) Error() string   { return f.he.Message + " " + f.err.Error() }
func (f *storeFailure) Unwrap() []error { return []error{f.he, f.err} }

// etagMatches compares an If-Match value with an etag, in any of the forms
// enroll.NormalizeETag accepts; "*" and no If-Match at all match any.
func etagMatches(ifMatch, etag string) bool {
	return enroll.NormalizeETag(ifMatch) == "" || enroll.ETagMatch(etag, ifMatch)
}

func (h *Hub) load(ctx context.Context, id string) (*deviceDoc, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.loadTwin(ctx, id)
}

// loadTwin loads a device or, for "{deviceId}/{moduleId}", a module.
func (h *Hub) loadTwin(ctx context.Context, tid string) (*deviceDoc, error) {
	dev, mod, isModule := strings.Cut(tid, "/")
	if err := validDeviceID(dev); err != nil {
		return nil, err
	}
	kind, missing := KindDevice, notFound(dev)
	if isModule {
		if err := validModuleID(mod); err != nil {
			return nil, err
		}
		kind, missing = KindModule, moduleNotFound(dev, mod)
	}
	rec, err := h.st.Get(ctx, kind, deviceKey(h.cfg.Name, tid))
	if errors.Is(err, store.ErrNotFound) {
		return nil, missing
	}
	if err != nil {
		return nil, storeErr(err)
	}
	var d deviceDoc
	if err := decodeJSON(rec.Data, &d); err != nil {
		return nil, fmt.Errorf("twin %s: decode: %w", tid, err)
	}
	d.etag = rec.ETag
	return &d, nil
}

// save writes d; with create it must not exist, otherwise it must not have
// changed since it was loaded.
func (h *Hub) save(ctx context.Context, d *deviceDoc, create bool) error {
	w, err := h.write(d, create)
	if err != nil {
		return err
	}
	rec, err := h.st.Put(ctx, w.Record, w.Cond)
	if err != nil {
		return err
	}
	d.etag = rec.ETag
	return nil
}

// write is the store write that saves d: with create, on condition that it
// does not exist; otherwise that it has not changed since it was loaded.
func (h *Hub) write(d *deviceDoc, create bool) (store.Write, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return store.Write{}, fmt.Errorf("device %s: encode: %w", d.DeviceID, err)
	}
	cond := store.Condition{IfMatch: d.etag}
	if create {
		cond = store.Condition{MustNotExist: true}
	}
	kind := KindDevice
	if d.ModuleID != "" {
		kind = KindModule
	}
	return store.Write{Record: store.Record{Kind: kind, ID: deviceKey(h.cfg.Name, d.twinID()), Ref: h.cfg.Name, Data: data}, Cond: cond}, nil
}

// modify loads a device, applies fn and saves it, retrying when a
// concurrent write got in between. fn may return an error to stop.
func (h *Hub) modify(ctx context.Context, id string, fn func(*deviceDoc) error) (*deviceDoc, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.modifyTwin(ctx, id, fn)
}

// modifyTwin is modify for a device or a module (loadTwin).
func (h *Hub) modifyTwin(ctx context.Context, tid string, fn func(*deviceDoc) error) (*deviceDoc, error) {
	id := tid
	for range maxPatchAttempts {
		d, err := h.loadTwin(ctx, tid)
		if err != nil {
			return nil, err
		}
		if err := fn(d); err != nil {
			return nil, err
		}
		err = h.save(ctx, d, false)
		if err == nil {
			return d, nil
		}
		if errors.Is(err, store.ErrNotFound) {
			if dev, mod, ok := strings.Cut(tid, "/"); ok {
				return nil, moduleNotFound(dev, mod)
			}
			return nil, notFound(id)
		}
		if !errors.Is(err, store.ErrPrecondition) {
			return nil, storeErr(err)
		}
	}
	return nil, azurehub.Errorf(http.StatusServiceUnavailable, azurehub.CodeServiceUnavailable, "Device %s is being changed concurrently; try again.", id)
}

// normalizeAuth checks an identity's authentication and generates keys
// where the client left them empty. old is the current one on updates.
func normalizeAuth(a *azurehub.Authentication, old *azurehub.Authentication) (azurehub.Authentication, error) {
	if a == nil {
		if old != nil {
			return *old, nil
		}
		a = &azurehub.Authentication{Type: azurehub.AuthSAS}
	}
	out := *a
	if out.Type == "" {
		out.Type = azurehub.AuthSAS
		if out.X509Thumbprint != nil && (out.X509Thumbprint.PrimaryThumbprint != nil || out.X509Thumbprint.SecondaryThumbprint != nil) {
			out.Type = azurehub.AuthSelfSigned
		}
	}
	switch out.Type {
	case azurehub.AuthSAS:
		out.X509Thumbprint = nil
		k := azurehub.SymmetricKey{}
		if out.SymmetricKey != nil {
			k = *out.SymmetricKey
		}
		if k.PrimaryKey == "" && k.SecondaryKey == "" && old != nil && old.Type == azurehub.AuthSAS && old.SymmetricKey != nil {
			// Node's Registry.update sends empty keys when the caller gave
			// none; that must not lock the device out.
			k = *old.SymmetricKey
		}
		if k.PrimaryKey == "" {
			k.PrimaryKey = sas.GenerateKey(32)
		}
		if k.SecondaryKey == "" {
			k.SecondaryKey = sas.GenerateKey(32)
		}
		for _, key := range []string{k.PrimaryKey, k.SecondaryKey} {
			if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) < 16 || len(b) > 64 {
				return out, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Symmetric keys must be base64 encoded and 16 to 64 bytes long.")
			}
		}
		out.SymmetricKey = &k
	case azurehub.AuthSelfSigned:
		out.SymmetricKey = nil
		t := out.X509Thumbprint
		if t == nil || t.PrimaryThumbprint == nil || *t.PrimaryThumbprint == "" {
			return out, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "A self-signed device needs a primary thumbprint.")
		}
	case azurehub.AuthCertificateAuthority, azurehub.AuthNone:
		out.SymmetricKey, out.X509Thumbprint = nil, nil
	default:
		return out, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Unknown authentication type %q.", out.Type)
	}
	return out, nil
}

func normalizeStatus(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", azurehub.StatusEnabled:
		return azurehub.StatusEnabled, nil
	case azurehub.StatusDisabled:
		return azurehub.StatusDisabled, nil
	}
	return "", azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Unknown device status %q.", s)
}

func newGenerationID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	n := uint64(0)
	for _, x := range b {
		n = n<<8 | uint64(x)
	}
	return "63" + strconv.FormatUint(n%1e16, 10)
}

// CreateDevice creates a device identity with an empty twin.
func (h *Hub) CreateDevice(ctx context.Context, in *azurehub.Device) (*azurehub.Device, error) {
	d, err := h.newDevice(ctx, in)
	if err != nil {
		return nil, err
	}
	if err := h.save(ctx, d, true); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, azurehub.Errorf(http.StatusConflict, azurehub.CodeDeviceAlreadyExists, "A device with ID '%s' is already registered.", in.DeviceID)
		}
		return nil, storeErr(err)
	}
	h.log.Info("device created", "hub", h.cfg.Name, "deviceId", d.DeviceID)
	return h.deviceView(d), nil
}

// newDevice is the document of a device identity created from in, with an
// empty twin.
func (h *Hub) newDevice(ctx context.Context, in *azurehub.Device) (*deviceDoc, error) {
	if err := validDeviceID(in.DeviceID); err != nil {
		return nil, err
	}
	auth, err := normalizeAuth(in.Authentication, nil)
	if err != nil {
		return nil, err
	}
	status, err := normalizeStatus(in.Status)
	if err != nil {
		return nil, err
	}
	now := h.now()
	d := &deviceDoc{
		DeviceID:          in.DeviceID,
		GenerationID:      newGenerationID(),
		DeviceVersion:     1,
		Status:            status,
		StatusReason:      in.StatusReason,
		StatusUpdatedTime: now,
		Auth:              auth,
		TwinVersion:       1,
		Tags:              map[string]any{},
		Desired:           newSection(now),
		Reported:          newSection(now),
	}
	if in.Capabilities != nil {
		d.IoTEdge = in.Capabilities.IoTEdge
	}
	if err := h.setScopes(ctx, d, in.DeviceScope, in.ParentScopes); err != nil {
		return nil, err
	}
	return d, nil
}

// StageNewDevice returns the store write that creates the identity in with
// twin (nil for an empty one), leaving the hub exactly as CreateDevice
// followed by ReplaceTwin would, for a caller that commits it in one batch
// with records of its own: the provisioning engine commits a device's
// identity and its registration record together. It returns ok false when
// the hub holds the device already (the caller then takes the path that
// updates it); the write's condition catches a device created meanwhile.
// committed is to be called once the write has committed.
func (h *Hub) StageNewDevice(ctx context.Context, in *azurehub.Device, twin *azurehub.Twin) (w store.Write, committed func(), ok bool, err error) {
	if err := validDeviceID(in.DeviceID); err != nil {
		return store.Write{}, nil, false, err
	}
	// Whether the hub holds the device is asked first: a re-registration
	// then builds nothing it would throw away.
	switch _, err := h.st.Get(ctx, KindDevice, deviceKey(h.cfg.Name, in.DeviceID)); {
	case err == nil:
		return store.Write{}, nil, false, nil
	case !errors.Is(err, store.ErrNotFound):
		return store.Write{}, nil, false, storeErr(err)
	}
	d, err := h.newDevice(ctx, in)
	if err != nil {
		return store.Write{}, nil, false, err
	}
	if twin != nil {
		tags, desired, err := twinInput(twin)
		if err != nil {
			return store.Write{}, nil, false, err
		}
		if _, err := d.replaceTwin(tags, desired, h.now()); err != nil {
			return store.Write{}, nil, false, err
		}
	}
	if w, err = h.write(d, true); err != nil {
		return store.Write{}, nil, false, err
	}
	committed = func() { h.log.Info("device created", "hub", h.cfg.Name, "deviceId", d.DeviceID) }
	return w, committed, true, nil
}

// StageKeep returns, for a device the hub holds, the store write that
// keeps it exactly as it is but fails if it changes before the write
// commits, with the device and its twin as they are: a caller that finds
// them already as it wants them commits the write in one batch with
// records of its own instead of writing the hub. ok is false when the hub
// holds no such device.
func (h *Hub) StageKeep(ctx context.Context, id string) (w store.Write, dev *azurehub.Device, twin *azurehub.Twin, ok bool, err error) {
	d, err := h.load(ctx, id)
	if errors.Is(err, azurehub.ErrNotFound) {
		return store.Write{}, nil, nil, false, nil
	}
	if err != nil {
		return store.Write{}, nil, nil, false, err
	}
	if w, err = h.write(d, false); err != nil {
		return store.Write{}, nil, nil, false, err
	}
	return w, h.deviceView(d), h.twinView(d), true, nil
}

// UpdateDevice replaces an existing identity's status, authentication and
// capabilities. etag "" or "*" matches any version; a missing device fails
// the precondition, as Azure documents for If-Match.
func (h *Hub) UpdateDevice(ctx context.Context, in *azurehub.Device, etag string) (*azurehub.Device, error) {
	var disable bool
	d, err := h.modify(ctx, in.DeviceID, func(d *deviceDoc) error {
		if !etagMatches(etag, d.deviceETag()) {
			return preconditionFailed(in.DeviceID)
		}
		auth, err := normalizeAuth(in.Authentication, &d.Auth)
		if err != nil {
			return err
		}
		status, err := normalizeStatus(in.Status)
		if err != nil {
			return err
		}
		if status != d.Status {
			d.Status, d.StatusUpdatedTime = status, h.now()
		}
		disable = status == azurehub.StatusDisabled
		d.StatusReason = in.StatusReason
		d.Auth = auth
		if in.Capabilities != nil {
			d.IoTEdge = in.Capabilities.IoTEdge
		}
		if err := h.setScopes(ctx, d, in.DeviceScope, in.ParentScopes); err != nil {
			return err
		}
		d.DeviceVersion++
		return nil
	})
	var he *azurehub.Error
	if errors.As(err, &he) && he.StatusCode == http.StatusNotFound && enroll.NormalizeETag(etag) != "" {
		return nil, preconditionFailed(in.DeviceID)
	}
	if err != nil {
		return nil, err
	}
	if disable {
		// Disabled devices may not use the device endpoints.
		h.disconnect(d.DeviceID)
	}
	return h.deviceView(d), nil
}

// GetDevice returns a device identity.
func (h *Hub) GetDevice(ctx context.Context, id string) (*azurehub.Device, error) {
	d, err := h.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return h.deviceView(d), nil
}

// DeleteDevice deletes a device, its twin and its MQTT session, and
// disconnects it.
func (h *Hub) DeleteDevice(ctx context.Context, id, etag string) error {
	for range maxPatchAttempts {
		d, err := h.load(ctx, id)
		if err != nil {
			return err
		}
		if !etagMatches(etag, d.deviceETag()) {
			return preconditionFailed(id)
		}
		err = h.st.Delete(ctx, KindDevice, deviceKey(h.cfg.Name, d.DeviceID), store.Condition{IfMatch: d.etag})
		if errors.Is(err, store.ErrPrecondition) {
			continue
		}
		if errors.Is(err, store.ErrNotFound) {
			return notFound(id)
		}
		if err != nil {
			return storeErr(err)
		}
		h.disconnect(d.DeviceID)
		h.forget(d.DeviceID)
		h.c2d.drop(d.DeviceID)
		h.dropSession(ctx, d.DeviceID)
		h.deleteModules(ctx, d.DeviceID)
		h.log.Info("device deleted", "hub", h.cfg.Name, "deviceId", d.DeviceID)
		return nil
	}
	return azurehub.Errorf(http.StatusServiceUnavailable, azurehub.CodeServiceUnavailable, "Device %s is being changed concurrently; try again.", id)
}

// ListDevices returns a page of devices in id order after the id after.
func (h *Hub) ListDevices(ctx context.Context, after string, limit int) ([]*azurehub.Device, bool, error) {
	opt := store.ListOptions{Ref: h.cfg.Name, Limit: limit}
	if after != "" {
		opt.After = deviceKey(h.cfg.Name, after)
	}
	recs, more, err := h.st.List(ctx, KindDevice, opt)
	if err != nil {
		return nil, false, storeErr(err)
	}
	out := make([]*azurehub.Device, 0, len(recs))
	for _, rec := range recs {
		var d deviceDoc
		if err := decodeJSON(rec.Data, &d); err != nil {
			return nil, false, fmt.Errorf("device %s: decode: %w", rec.ID, err)
		}
		out = append(out, h.deviceView(&d))
	}
	return out, more, nil
}

// GetTwin returns a device twin.
func (h *Hub) GetTwin(ctx context.Context, id string) (*azurehub.Twin, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.getTwin(ctx, id)
}

func (h *Hub) getTwin(ctx context.Context, tid string) (*azurehub.Twin, error) {
	d, err := h.loadTwin(ctx, tid)
	if err != nil {
		return nil, err
	}
	return h.twinView(d), nil
}

// UpdateTwin merges patch's tags and desired properties into the twin and
// sends the desired change to the device if it is connected.
func (h *Hub) UpdateTwin(ctx context.Context, id string, patch *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.updateTwin(ctx, id, patch, etag)
}

// updateTwin is UpdateTwin for a device or a module.
func (h *Hub) updateTwin(ctx context.Context, id string, patch *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	tags, desired, err := twinInput(patch)
	if err != nil {
		return nil, err
	}
	// "desired": null clears every desired property, as on Azure.
	clear := patch != nil && patch.Properties != nil && patch.Properties.DesiredNull
	now := h.now()
	var pushed map[string]any
	d, err := h.modifyTwin(ctx, id, func(d *deviceDoc) error {
		if !etagMatches(etag, d.twinETag()) {
			return preconditionFailed(id)
		}
		changed := false
		if len(tags) > 0 {
			if d.Tags == nil {
				d.Tags = map[string]any{}
			}
			mergeInto(d.Tags, map[string]any{}, tags, now, 0)
			changed = true
		}
		pushed = desired
		if clear {
			pushed = d.Desired.replace(map[string]any{}, now, true)
			changed = true
		} else if d.Desired.patch(desired, now, true) {
			changed = true
		}
		if changed {
			d.TwinVersion++
		}
		return checkTwinSize(d)
	})
	if err != nil {
		return nil, err
	}
	if len(pushed) > 0 || clear {
		h.pushDesired(d.twinID(), pushed, d.Desired.Version)
	}
	return h.twinView(d), nil
}

// ReplaceTwin replaces the twin's tags and desired properties.
func (h *Hub) ReplaceTwin(ctx context.Context, id string, twin *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.replaceTwin(ctx, id, twin, etag)
}

// replaceTwin is ReplaceTwin for a device or a module.
func (h *Hub) replaceTwin(ctx context.Context, id string, twin *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	tags, desired, err := twinInput(twin)
	if err != nil {
		return nil, err
	}
	now := h.now()
	var diff map[string]any
	d, err := h.modifyTwin(ctx, id, func(d *deviceDoc) error {
		if !etagMatches(etag, d.twinETag()) {
			return preconditionFailed(id)
		}
		var rerr error
		diff, rerr = d.replaceTwin(tags, desired, now)
		return rerr
	})
	if err != nil {
		return nil, err
	}
	if len(diff) > 0 {
		h.pushDesired(d.twinID(), diff, d.Desired.Version)
	}
	return h.twinView(d), nil
}

// replaceTwin gives d the twin's tags and desired properties (a nil
// desired value is no property) and returns the desired properties that
// changed.
func (d *deviceDoc) replaceTwin(tags, desired map[string]any, now time.Time) (map[string]any, error) {
	want := make(map[string]any, len(desired))
	for k, v := range desired {
		if v != nil {
			want[k] = v
		}
	}
	d.Tags = map[string]any{}
	mergeInto(d.Tags, map[string]any{}, tags, now, 0)
	diff := d.Desired.replace(want, now, true)
	d.TwinVersion++
	return diff, checkTwinSize(d)
}

// ImportReported merges reported properties into a twin from the service
// side, which only migration between built-in hubs uses.
func (h *Hub) ImportReported(ctx context.Context, id string, reported map[string]any) error {
	reported = azurehub.StripMeta(reported)
	if err := enroll.ValidateTwinPatch("properties.reported", reported); err != nil {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "%v", err)
	}
	_, err := h.modify(ctx, id, func(d *deviceDoc) error {
		if d.Reported.patch(reported, h.now(), false) {
			d.TwinVersion++
		}
		return checkTwinSize(d)
	})
	return err
}

// updateReported applies a device's or a module's reported patch and
// returns the new reported version.
func (h *Hub) updateReported(ctx context.Context, id string, patch map[string]any) (int64, error) {
	if err := enroll.ValidateTwinPatch("properties.reported", patch); err != nil {
		return 0, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "%v", err)
	}
	d, err := h.modifyTwin(ctx, id, func(d *deviceDoc) error {
		if d.Reported.patch(patch, h.now(), false) {
			d.TwinVersion++
		}
		return checkTwinSize(d)
	})
	if err != nil {
		return 0, err
	}
	return d.Reported.Version, nil
}

func twinInput(t *azurehub.Twin) (tags, desired map[string]any, err error) {
	if t == nil {
		return nil, nil, nil
	}
	tags = azurehub.StripMeta(t.Tags)
	if t.Properties != nil {
		desired = azurehub.StripMeta(t.Properties.Desired)
		if len(t.Properties.Reported) > 0 {
			return nil, nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Reported properties can only be set by the device.")
		}
	}
	if err := enroll.ValidateTwinPatch("tags", tags); err != nil {
		return nil, nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "%v", err)
	}
	if err := enroll.ValidateTwinPatch("properties.desired", desired); err != nil {
		return nil, nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "%v", err)
	}
	return tags, desired, nil
}

func checkTwinSize(d *deviceDoc) error {
	switch {
	case enroll.TwinJSONSize(d.Tags) > enroll.MaxTwinTagsBytes:
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Twin tags exceed %d bytes.", enroll.MaxTwinTagsBytes)
	case enroll.TwinJSONSize(d.Desired.Props) > enroll.MaxTwinPropsBytes:
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Desired properties exceed %d bytes.", enroll.MaxTwinPropsBytes)
	case enroll.TwinJSONSize(d.Reported.Props) > enroll.MaxTwinPropsBytes:
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Reported properties exceed %d bytes.", enroll.MaxTwinPropsBytes)
	}
	return nil
}

// deviceView is the identity as the registry API shows it.
func (h *Hub) deviceView(d *deviceDoc) *azurehub.Device {
	state, stateTime, activity := h.connection(d.DeviceID)
	scope, parents := viewScopes(d)
	auth := d.Auth
	if auth.X509Thumbprint == nil {
		auth.X509Thumbprint = &azurehub.X509Thumbprint{}
	}
	return &azurehub.Device{
		DeviceID:                   d.DeviceID,
		GenerationID:               d.GenerationID,
		ETag:                       d.deviceETag(),
		ConnectionState:            state,
		Status:                     d.Status,
		StatusReason:               d.StatusReason,
		ConnectionStateUpdatedTime: stateTime,
		StatusUpdatedTime:          formatTime(d.StatusUpdatedTime),
		LastActivityTime:           activity,
		Authentication:             &auth,
		Capabilities:               &azurehub.Capabilities{IoTEdge: d.IoTEdge},
		DeviceScope:                scope,
		ParentScopes:               parents,
	}
}

// twinView is the twin as the service API shows it.
func (h *Hub) twinView(d *deviceDoc) *azurehub.Twin {
	state, _, activity := h.connection(d.twinID())
	tags := d.Tags
	if tags == nil {
		tags = map[string]any{}
	}
	t := &azurehub.Twin{
		DeviceID:           d.DeviceID,
		ModuleID:           d.ModuleID,
		ETag:               d.twinETag(),
		DeviceETag:         d.deviceETag(),
		Status:             d.Status,
		StatusReason:       d.StatusReason,
		StatusUpdateTime:   formatTime(d.StatusUpdatedTime),
		ConnectionState:    state,
		LastActivityTime:   activity,
		AuthenticationType: d.Auth.Type,
		X509Thumbprint:     d.Auth.X509Thumbprint,
		ModelID:            &d.ModelID,
		Version:            d.TwinVersion,
		Tags:               tags,
		Properties:         &azurehub.TwinProperties{Desired: d.Desired.view(), Reported: d.Reported.view()},
		Capabilities:       &azurehub.Capabilities{IoTEdge: d.IoTEdge},
	}
	t.DeviceScope, t.ParentScopes = viewScopes(d)
	if t.X509Thumbprint == nil {
		t.X509Thumbprint = &azurehub.X509Thumbprint{}
	}
	return t
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return neverTime
	}
	return t.UTC().Format(twinTimeLayout)
}
