package builtinhub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/store"
)

// maxModules bounds the modules of one device, as Azure does (50 per
// device), so a device's modules are read in one page.
const maxModules = 50

// validModuleID checks a module id: the device id rules (Azure's are the
// same), and no '$': "$edgeAgent" and "$edgeHub" are the IoT Edge
// runtime's, which built-in hubs do not run.
func validModuleID(id string) error {
	if id == "" || len(id) > 128 {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Module id must have 1 to 128 characters.")
	}
	if strings.HasPrefix(id, "$") {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Module id %q is reserved for the IoT Edge runtime.", id)
	}
	if err := validDeviceID(id); err != nil {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Module id %q contains a character that is not allowed.", id)
	}
	return nil
}

func moduleNotFound(dev, mod string) *azurehub.Error {
	return azurehub.Errorf(http.StatusNotFound, azurehub.CodeModuleNotFound, "Module %s on device %s not registered", mod, dev)
}

func moduleTID(dev, mod string) (string, error) {
	if err := validDeviceID(dev); err != nil {
		return "", err
	}
	if err := validModuleID(mod); err != nil {
		return "", err
	}
	return dev + "/" + mod, nil
}

// CreateModule creates a module identity, with an empty module twin, on an
// existing device.
func (h *Hub) CreateModule(ctx context.Context, in *azurehub.Module) (*azurehub.Module, error) {
	if _, err := moduleTID(in.DeviceID, in.ModuleID); err != nil {
		return nil, err
	}
	dev, err := h.load(ctx, in.DeviceID)
	if err != nil {
		return nil, err
	}
	mods, err := h.listModules(ctx, dev.DeviceID)
	if err != nil {
		return nil, err
	}
	if len(mods) >= maxModules {
		return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device %s already has %d modules, the most it may have.", dev.DeviceID, maxModules)
	}
	auth, err := normalizeAuth(in.Authentication, nil)
	if err != nil {
		return nil, err
	}
	if auth.Type == azurehub.AuthCertificateAuthority {
		return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Modules authenticate with keys or self-signed certificates, not certificateAuthority.")
	}
	now := h.now()
	d := &deviceDoc{
		DeviceID:          dev.DeviceID,
		ModuleID:          in.ModuleID,
		ManagedBy:         in.ManagedBy,
		GenerationID:      newGenerationID(),
		DeviceVersion:     1,
		Status:            azurehub.StatusEnabled,
		StatusUpdatedTime: now,
		Auth:              auth,
		TwinVersion:       1,
		Tags:              map[string]any{},
		Desired:           newSection(now),
		Reported:          newSection(now),
	}
	if err := h.save(ctx, d, true); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, azurehub.Errorf(http.StatusConflict, azurehub.CodeModuleAlreadyExists, "A module with ID '%s' is already registered on device '%s'.", in.ModuleID, dev.DeviceID)
		}
		return nil, storeErr(err)
	}
	h.log.Info("module created", "deviceId", d.DeviceID, "moduleId", d.ModuleID)
	return h.moduleView(d), nil
}

// UpdateModule replaces a module's authentication and managedBy; etag ""
// or "*" matches any version.
func (h *Hub) UpdateModule(ctx context.Context, in *azurehub.Module, etag string) (*azurehub.Module, error) {
	tid, err := moduleTID(in.DeviceID, in.ModuleID)
	if err != nil {
		return nil, err
	}
	d, err := h.modifyTwin(ctx, tid, func(d *deviceDoc) error {
		if !etagMatches(etag, d.deviceETag()) {
			return azurehub.Errorf(http.StatusPreconditionFailed, azurehub.CodePreconditionFailed, "Precondition failed: the etag does not match the current version of module %s.", in.ModuleID)
		}
		auth, err := normalizeAuth(in.Authentication, &d.Auth)
		if err != nil {
			return err
		}
		if auth.Type == azurehub.AuthCertificateAuthority {
			return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Modules authenticate with keys or self-signed certificates, not certificateAuthority.")
		}
		d.Auth, d.ManagedBy = auth, in.ManagedBy
		d.DeviceVersion++
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h.moduleView(d), nil
}

// GetModule returns a module identity.
func (h *Hub) GetModule(ctx context.Context, dev, mod string) (*azurehub.Module, error) {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return nil, err
	}
	d, err := h.loadTwin(ctx, tid)
	if err != nil {
		return nil, err
	}
	return h.moduleView(d), nil
}

// ListModules returns a device's modules in id order.
func (h *Hub) ListModules(ctx context.Context, dev string) ([]*azurehub.Module, error) {
	d, err := h.load(ctx, dev)
	if err != nil {
		return nil, err
	}
	docs, err := h.listModules(ctx, d.DeviceID)
	if err != nil {
		return nil, err
	}
	out := make([]*azurehub.Module, 0, len(docs))
	for _, m := range docs {
		out = append(out, h.moduleView(m))
	}
	return out, nil
}

// listModules reads a device's modules: their records are the ones whose
// ids start with hub/deviceId/, contiguous in id order.
func (h *Hub) listModules(ctx context.Context, dev string) ([]*deviceDoc, error) {
	prefix := deviceKey(h.cfg.Name, dev) + "/"
	recs, _, err := h.st.List(ctx, KindModule, store.ListOptions{Ref: h.cfg.Name, After: prefix, Limit: maxModules + 1})
	if err != nil {
		return nil, storeErr(err)
	}
	var out []*deviceDoc
	for _, rec := range recs {
		if !strings.HasPrefix(rec.ID, prefix) {
			break
		}
		var d deviceDoc
		if err := decodeJSON(rec.Data, &d); err != nil {
			return nil, fmt.Errorf("module %s: decode: %w", rec.ID, err)
		}
		d.etag = rec.ETag
		out = append(out, &d)
	}
	return out, nil
}

// DeleteModule deletes a module and its twin and disconnects it.
func (h *Hub) DeleteModule(ctx context.Context, dev, mod, etag string) error {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return err
	}
	for range maxPatchAttempts {
		d, err := h.loadTwin(ctx, tid)
		if err != nil {
			return err
		}
		if !etagMatches(etag, d.deviceETag()) {
			return azurehub.Errorf(http.StatusPreconditionFailed, azurehub.CodePreconditionFailed, "Precondition failed: the etag does not match the current version of module %s.", mod)
		}
		err = h.st.Delete(ctx, KindModule, deviceKey(h.cfg.Name, d.twinID()), store.Condition{IfMatch: d.etag})
		if errors.Is(err, store.ErrPrecondition) {
			continue
		}
		if errors.Is(err, store.ErrNotFound) {
			return moduleNotFound(dev, mod)
		}
		if err != nil {
			return storeErr(err)
		}
		h.dropModule(ctx, d.twinID())
		h.log.Info("module deleted", "deviceId", d.DeviceID, "moduleId", d.ModuleID)
		return nil
	}
	return azurehub.Errorf(http.StatusServiceUnavailable, azurehub.CodeServiceUnavailable, "Module %s is being changed concurrently; try again.", mod)
}

// dropModule ends what a deleted module had: its connection and session.
func (h *Hub) dropModule(ctx context.Context, tid string) {
	h.disconnect(tid)
	h.forget(tid)
	h.dropSession(ctx, tid)
}

// deleteModules deletes the modules of a deleted device.
func (h *Hub) deleteModules(ctx context.Context, dev string) {
	mods, err := h.listModules(ctx, dev)
	if err != nil {
		h.log.Warn("deleting a device's modules failed", "deviceId", dev, "err", err)
		return
	}
	for _, m := range mods {
		if err := h.st.Delete(ctx, KindModule, deviceKey(h.cfg.Name, m.twinID()), store.Condition{}); err != nil && !errors.Is(err, store.ErrNotFound) {
			h.log.Warn("deleting a device's module failed", "deviceId", dev, "moduleId", m.ModuleID, "err", err)
			continue
		}
		h.dropModule(ctx, m.twinID())
	}
}

// GetModuleTwin returns a module twin.
func (h *Hub) GetModuleTwin(ctx context.Context, dev, mod string) (*azurehub.Twin, error) {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return nil, err
	}
	return h.getTwin(ctx, tid)
}

// UpdateModuleTwin merges patch's tags and desired properties into a
// module twin.
func (h *Hub) UpdateModuleTwin(ctx context.Context, dev, mod string, patch *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return nil, err
	}
	return h.updateTwin(ctx, tid, patch, etag)
}

// ReplaceModuleTwin replaces a module twin's tags and desired properties.
func (h *Hub) ReplaceModuleTwin(ctx context.Context, dev, mod string, twin *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return nil, err
	}
	return h.replaceTwin(ctx, tid, twin, etag)
}

// moduleView is a module identity as the registry API shows it.
func (h *Hub) moduleView(d *deviceDoc) *azurehub.Module {
	state, stateTime, activity := h.connection(d.twinID())
	auth := d.Auth
	if auth.X509Thumbprint == nil {
		auth.X509Thumbprint = &azurehub.X509Thumbprint{}
	}
	return &azurehub.Module{
		ModuleID:                   d.ModuleID,
		ManagedBy:                  d.ManagedBy,
		DeviceID:                   d.DeviceID,
		GenerationID:               d.GenerationID,
		ETag:                       d.deviceETag(),
		ConnectionState:            state,
		ConnectionStateUpdatedTime: stateTime,
		LastActivityTime:           activity,
		Authentication:             &auth,
	}
}
