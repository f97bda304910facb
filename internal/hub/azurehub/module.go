package azurehub

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

func modulePath(dev, mod string) string {
	return "/devices/" + url.PathEscape(dev) + "/modules/" + url.PathEscape(mod)
}

// CreateModule creates a module identity on a device; empty symmetric
// keys make the hub generate them.
func (c *Client) CreateModule(ctx context.Context, m *Module) (*Module, error) {
	var out Module
	if err := c.do(ctx, http.MethodPut, modulePath(m.DeviceID, m.ModuleID), "", m, &out); err != nil {
		return nil, fmt.Errorf("create module %q on device %q: %w", m.ModuleID, m.DeviceID, err)
	}
	return &out, nil
}

// GetModule returns a module identity.
func (c *Client) GetModule(ctx context.Context, dev, mod string) (*Module, error) {
	var out Module
	if err := c.do(ctx, http.MethodGet, modulePath(dev, mod), "", nil, &out); err != nil {
		return nil, fmt.Errorf("get module %q on device %q: %w", mod, dev, err)
	}
	return &out, nil
}

// ListModules returns the module identities of a device.
func (c *Client) ListModules(ctx context.Context, dev string) ([]*Module, error) {
	var out []*Module
	if err := c.do(ctx, http.MethodGet, "/devices/"+url.PathEscape(dev)+"/modules", "", nil, &out); err != nil {
		return nil, fmt.Errorf("list modules of device %q: %w", dev, err)
	}
	return out, nil
}

// DeleteModule deletes a module identity; etag "" deletes any version.
func (c *Client) DeleteModule(ctx context.Context, dev, mod, etag string) error {
	if err := c.do(ctx, http.MethodDelete, modulePath(dev, mod), ifMatch(etag), nil, nil); err != nil {
		return fmt.Errorf("delete module %q on device %q: %w", mod, dev, err)
	}
	return nil
}
