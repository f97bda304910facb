package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/sas"
)

// GroupSpec describes the enrollment group SetupGroup creates.
type GroupSpec struct {
	// ID of the group.
	ID string
	// IoTHubs, when set, are the hubs the group allocates to (hashed).
	IoTHubs []string
}

// SetupGroup makes sure a symmetric-key enrollment group exists through the
// service API and returns its primary key, from which every benchmark device
// derives its own. An existing group is reused as it is, so repeated runs
// register the same devices again (reprovisioning) unless the ID prefix
// changes.
func SetupGroup(ctx context.Context, svc *service.Client, spec GroupSpec) (string, error) {
	g := &dps.EnrollmentGroup{
		EnrollmentGroupID: spec.ID,
		Attestation: &dps.AttestationMechanism{
			Type: dps.AttestationSymmetricKey,
			SymmetricKey: &dps.SymmetricKeyAttestation{
				PrimaryKey:   sas.GenerateKey(64),
				SecondaryKey: sas.GenerateKey(64),
			},
		},
		ProvisioningStatus: dps.ProvisioningEnabled,
	}
	if len(spec.IoTHubs) > 0 {
		g.IoTHubs = spec.IoTHubs
		g.AllocationPolicy = dps.AllocationHashed
	}
	created, err := svc.CreateEnrollmentGroup(ctx, g)
	var de *dps.Error
	switch {
	case err == nil:
		if created.Attestation != nil && created.Attestation.SymmetricKey != nil && created.Attestation.SymmetricKey.PrimaryKey != "" {
			return created.Attestation.SymmetricKey.PrimaryKey, nil
		}
		// The answer left the keys out; the ones sent are the group's.
		return g.Attestation.SymmetricKey.PrimaryKey, nil
	case errors.As(err, &de) && de.Status() == 409:
		// The group exists: use its key.
	default:
		return "", fmt.Errorf("bench: create enrollment group %q: %w", spec.ID, err)
	}
	att, err := svc.GetEnrollmentGroupAttestation(ctx, spec.ID)
	if err != nil {
		return "", fmt.Errorf("bench: read key of enrollment group %q: %w", spec.ID, err)
	}
	if att.Type != dps.AttestationSymmetricKey || att.SymmetricKey == nil || att.SymmetricKey.PrimaryKey == "" {
		return "", fmt.Errorf("bench: enrollment group %q exists and does not use symmetric keys", spec.ID)
	}
	return att.SymmetricKey.PrimaryKey, nil
}
