package builtinhub

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// maxBulkDevices is how many devices one bulk registry operation may name,
// as on Azure.
const maxBulkDevices = 100

// maxBulkBody bounds a bulk request's body: 100 devices, each with room
// for a twin.
const maxBulkBody = 4 << 20

// Import modes of the bulk registry operation, lower-cased (clients send
// "create", "Update", "DeleteIfMatchETag", …).
const (
	importCreate            = "create"
	importUpdate            = "update"
	importUpdateIfMatchETag = "updateifmatchetag"
	importDelete            = "delete"
	importDeleteIfMatchETag = "deleteifmatchetag"
)

// BulkDevice is one device of a bulk registry operation (Azure's
// ExportImportDevice): "id" rather than "deviceId", the operation in
// importMode, and for creates an optional initial twin.
type BulkDevice struct {
	ID             string                   `json:"id"`
	ETag           string                   `json:"eTag,omitempty"`
	ImportMode     string                   `json:"importMode"`
	Status         string                   `json:"status,omitempty"`
	StatusReason   *string                  `json:"statusReason,omitempty"`
	Authentication *azurehub.Authentication `json:"authentication,omitempty"`
	Capabilities   *azurehub.Capabilities   `json:"capabilities,omitempty"`
	DeviceScope    string                   `json:"deviceScope,omitempty"`
	ParentScopes   []string                 `json:"parentScopes,omitempty"`
	Tags           map[string]any           `json:"tags,omitempty"`
	Properties     *azurehub.TwinProperties `json:"properties,omitempty"`
}

// BulkResult is the answer of a bulk registry operation.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkIssue `json:"errors"`
	Warnings     []BulkIssue `json:"warnings"`
}

// BulkIssue is what went wrong with one device of a bulk operation.
type BulkIssue struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   string `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// BulkDevices applies up to 100 creates, updates and deletes, device by
// device: one device failing does not stop the others, and the result
// lists each failure. A request that is wrong as a whole (too many
// devices, an unknown import mode, the same device twice) fails entirely,
// before any change.
func (h *Hub) BulkDevices(ctx context.Context, devs []BulkDevice) (*BulkResult, error) {
	if len(devs) == 0 || len(devs) > maxBulkDevices {
		return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "A bulk operation takes 1 to %d devices, not %d.", maxBulkDevices, len(devs))
	}
	seen := make(map[string]bool, len(devs))
	for _, d := range devs {
		if err := validDeviceID(d.ID); err != nil {
			return nil, err
		}
		switch strings.ToLower(d.ImportMode) {
		case importCreate, importUpdate, importUpdateIfMatchETag, importDelete, importDeleteIfMatchETag:
		default:
			return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device %s: unknown importMode %q.", d.ID, d.ImportMode)
		}
		key := strings.ToLower(d.ID)
		if seen[key] {
			return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device %s appears more than once.", d.ID)
		}
		seen[key] = true
	}
	res := &BulkResult{Errors: []BulkIssue{}, Warnings: []BulkIssue{}}
	for i := range devs {
		if err := h.bulkOne(ctx, &devs[i]); err != nil {
			var he *azurehub.Error
			var sf *storeFailure
			if errors.As(err, &sf) || !errors.As(err, &he) {
				// The store failing fails the whole request, as any
				// other request; what is done stays done.
				return nil, err
			}
			res.Errors = append(res.Errors, BulkIssue{DeviceID: devs[i].ID, ErrorCode: he.Code, ErrorStatus: he.Message})
		}
	}
	res.IsSuccessful = len(res.Errors) == 0
	return res, nil
}

func (h *Hub) bulkOne(ctx context.Context, b *BulkDevice) error {
	dev := &azurehub.Device{
		DeviceID:       b.ID,
		Status:         b.Status,
		StatusReason:   b.StatusReason,
		Authentication: b.Authentication,
		Capabilities:   b.Capabilities,
		DeviceScope:    b.DeviceScope,
		ParentScopes:   b.ParentScopes,
	}
	etag := "" // any version; a missing device is DeviceNotFound
	switch mode := strings.ToLower(b.ImportMode); mode {
	case importCreate:
		twin := &azurehub.Twin{Tags: b.Tags, Properties: b.Properties}
		tags, desired, err := twinInput(twin)
		if err != nil {
			return err
		}
		if _, err := h.CreateDevice(ctx, dev); err != nil {
			return err
		}
		if len(tags) == 0 && len(desired) == 0 {
			return nil
		}
		_, err = h.UpdateTwin(ctx, b.ID, &azurehub.Twin{Tags: tags, Properties: &azurehub.TwinProperties{Desired: desired}}, "*")
		return err
	case importUpdateIfMatchETag, importDeleteIfMatchETag:
		if strings.Trim(b.ETag, `"`) == "" || b.ETag == "*" {
			return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Device %s: %s needs the device's eTag.", b.ID, b.ImportMode)
		}
		etag = b.ETag
		if mode == importDeleteIfMatchETag {
			return h.DeleteDevice(ctx, b.ID, etag)
		}
		_, err := h.UpdateDevice(ctx, dev, etag)
		return err
	case importDelete:
		return h.DeleteDevice(ctx, b.ID, etag)
	default: // importUpdate
		_, err := h.UpdateDevice(ctx, dev, etag)
		return err
	}
}
