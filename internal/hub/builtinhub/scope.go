package builtinhub

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// edgeScopePrefix starts every IoT Edge device scope.
const edgeScopePrefix = "ms-azure-iot-edge://"

// edgeScope is the scope of an IoT Edge device, formed as Azure forms it:
// the device id and its generation id. Children name it as their parent.
func edgeScope(d *deviceDoc) string {
	return edgeScopePrefix + d.DeviceID + "-" + d.GenerationID
}

// setScopes gives d its scopes after a create or an update: an edge device
// has its own scope as deviceScope; any device may have one parent, an
// edge device of the same hub, named by parentScopes or (for a device that
// is not an edge device, as older clients do) by deviceScope; the parent's
// scope then also is a leaf device's deviceScope.
func (h *Hub) setScopes(ctx context.Context, d *deviceDoc, scope string, parents []string) error {
	own := edgeScope(d)
	var parent string
	switch {
	case len(parents) > 1:
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "A device can have at most one parent scope.")
	case len(parents) == 1:
		parent = parents[0]
	case scope != "" && scope != own && !d.IoTEdge:
		parent = scope
	case scope != "" && scope != own && d.IoTEdge && !strings.HasPrefix(scope, edgeScopePrefix+d.DeviceID+"-"):
		// An edge device's deviceScope is its own; another edge device's
		// scope there names its parent.
		parent = scope
	}
	if parent != "" {
		if err := h.checkParent(ctx, d, parent); err != nil {
			return err
		}
	}
	d.DeviceScope, d.ParentScopes = parent, nil
	if d.IoTEdge {
		d.DeviceScope = own
	}
	if parent != "" {
		d.ParentScopes = []string{parent}
	}
	return nil
}

// checkParent checks that scope is the scope of an edge device of the hub
// other than d.
func (h *Hub) checkParent(ctx context.Context, d *deviceDoc, scope string) error {
	invalid := func(format string, args ...any) error {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, format, args...)
	}
	rest, ok := strings.CutPrefix(scope, edgeScopePrefix)
	i := strings.LastIndexByte(rest, '-')
	if !ok || i <= 0 {
		return invalid("Parent scope %q is not an IoT Edge device scope (%s{deviceId}-{generationId}).", scope, edgeScopePrefix)
	}
	pid := rest[:i]
	if strings.EqualFold(pid, d.DeviceID) {
		return invalid("A device cannot be its own parent.")
	}
	p, err := h.load(ctx, pid)
	if err != nil {
		var he *azurehub.Error
		if errors.As(err, &he) && he.StatusCode == http.StatusNotFound {
			return invalid("Parent scope %q names no device of this hub.", scope)
		}
		return err
	}
	if !p.IoTEdge || edgeScope(p) != scope {
		return invalid("Parent scope %q is not the scope of an IoT Edge device of this hub.", scope)
	}
	return nil
}

// viewScopes are d's scopes as the APIs show them; an edge device stored
// before scopes were kept gets its own.
func viewScopes(d *deviceDoc) (string, []string) {
	if d.IoTEdge && !strings.HasPrefix(d.DeviceScope, edgeScopePrefix+d.DeviceID+"-") {
		return edgeScope(d), d.ParentScopes
	}
	return d.DeviceScope, d.ParentScopes
}
