package bench

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/sas"
)

// GroupSpec describes the enrollment group SetupGroup creates.
type GroupSpec struct {
	// ID of the group.
	ID string
	// IoTHubs, when set, are the hubs the group allocates to (hashed).
	IoTHubs []string
	// IssuingCA, when set, names the CA that issues certificates to the
	// group's devices that send a csr (clientCertificateIssuancePolicy).
	IssuingCA string
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
	g.ClientCertIssuancePolicy = issuancePolicy(spec.IssuingCA)
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

func issuancePolicy(ca string) json.RawMessage {
	if ca == "" {
		return nil
	}
	raw, _ := json.Marshal(dps.ClientCertificateIssuancePolicy{CertificateAuthorityName: ca})
	return raw
}

// SetupTPMs makes sure each TPM has an individual TPM enrollment, under
// TPMRegistrationID(prefix, k), through the service API. An existing
// enrollment is replaced, so a run may reuse a prefix with other TPMs.
func SetupTPMs(ctx context.Context, svc *service.Client, prefix string, tpms []device.TPM, spec GroupSpec) error {
	for k, t := range tpms {
		e := &dps.IndividualEnrollment{
			RegistrationID: TPMRegistrationID(prefix, k),
			Attestation: &dps.AttestationMechanism{
				Type: dps.AttestationTPM,
				TPM:  &dps.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(t.EndorsementKey())},
			},
			ProvisioningStatus:       dps.ProvisioningEnabled,
			ClientCertIssuancePolicy: issuancePolicy(spec.IssuingCA),
		}
		if len(spec.IoTHubs) > 0 {
			e.IoTHubs = spec.IoTHubs
			e.AllocationPolicy = dps.AllocationHashed
		}
		_, err := svc.CreateEnrollment(ctx, e)
		var de *dps.Error
		if errors.As(err, &de) && de.Status() == 409 {
			e.ETag = "*"
			_, err = svc.UpdateEnrollment(ctx, e)
		}
		if err != nil {
			return fmt.Errorf("bench: enroll TPM %d as %q: %w", k, e.RegistrationID, err)
		}
	}
	return nil
}
