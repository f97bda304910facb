package enroll

import (
	"context"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// groups stores dps.EnrollmentGroup documents, keys and certificates
// included, under store.KindEnrollmentGroup.
var groups = &docKind[dps.EnrollmentGroup]{
	kind:     store.KindEnrollmentGroup,
	idName:   "enrollmentGroupId",
	noun:     "enrollment group",
	notFound: dps.CodeEnrollmentGroupNotFound,
	id:       func(g *dps.EnrollmentGroup) string { return g.EnrollmentGroupID },
	setID:    func(g *dps.EnrollmentGroup, id string) { g.EnrollmentGroupID = id },
	etag:     func(g *dps.EnrollmentGroup) string { return g.ETag },
	clearReadOnly: func(g *dps.EnrollmentGroup) {
		g.ETag, g.CreatedDateTimeUTC, g.LastUpdatedDateTimeUTC = "", nil, nil
	},
	setMeta: func(g *dps.EnrollmentGroup, rec store.Record) {
		created, updated := rec.Created.UTC(), rec.Updated.UTC()
		g.ETag, g.CreatedDateTimeUTC, g.LastUpdatedDateTimeUTC = EnrollmentETag(rec.ETag), &created, &updated
	},
	prepare: prepareGroup,
	bulkError: func(id string, code int, status string) dps.BulkEnrollmentOperationError {
		return dps.BulkEnrollmentOperationError{EnrollmentGroupID: id, ErrorCode: code, ErrorStatus: status}
	},
}

// GetGroup returns the stored enrollment group with its symmetric keys and
// certificates (a *dps.Error 404204 when there is none). Use GroupView
// before showing it to a client.
func GetGroup(ctx context.Context, st store.Store, groupID string) (*dps.EnrollmentGroup, error) {
	return groups.get(ctx, st, groupID)
}

// PutGroup creates or replaces an enrollment group with the rules of
// PutEnrollment; groups may not use TPM attestation.
func PutGroup(ctx context.Context, st store.Store, groupID string, g *dps.EnrollmentGroup, ifMatch string) (*dps.EnrollmentGroup, error) {
	return groups.put(ctx, st, groupID, g, precondition{ifMatch: ifMatch})
}

// DeleteGroup removes an enrollment group; ifMatch may be empty, "*" or its
// etag. As in Azure, the registration records of its devices stay.
func DeleteGroup(ctx context.Context, st store.Store, groupID, ifMatch string) error {
	return groups.delete(ctx, st, groupID, ifMatch)
}

// ListGroups returns a page of enrollment groups (with keys and
// certificates) and whether more follow. The provisioning engine walks it to
// find the group that vouches for a device.
func ListGroups(ctx context.Context, st store.Store, opt store.ListOptions) ([]*dps.EnrollmentGroup, bool, error) {
	return groups.list(ctx, st, opt)
}

// BulkGroups runs a bulk operation on enrollment groups with the rules of
// BulkEnrollments (404204 for a missing group on delete).
func BulkGroups(ctx context.Context, st store.Store, op *dps.BulkEnrollmentGroupOperation) (*dps.BulkEnrollmentOperationResult, error) {
	return groups.bulk(ctx, st, op.Mode, op.EnrollmentGroups)
}
