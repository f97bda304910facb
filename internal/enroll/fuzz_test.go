package enroll

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeEnrollment feeds arbitrary bodies to the enrollment and group
// decoders and validators, which face untrusted request bodies: they must
// never panic, and what they accept must render as JSON.
func FuzzDecodeEnrollment(f *testing.F) {
	seeds := []string{
		`{"registrationId":"device-01","deviceId":"device-01","attestation":{"type":"symmetricKey"},"provisioningStatus":"enabled","capabilities":{"iotEdge":false},"initialTwin":{"tags":{"site":"lab"},"properties":{"desired":{"interval":30}}},"reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":false},"allocationPolicy":"custom","customAllocationDefinition":{"webhookUrl":"https://func.example/api/alloc?code=secret","apiVersion":"2021-10-01"},"iotHubs":["hub1.azure-devices.net","hub2.azure-devices.net"]}`,
		`{"registrationId":"tpm-dev","attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQALAAMAsgAg"}},"deviceId":"tpm-dev"}`,
		`{"enrollmentGroupId":"group-1","attestation":{"type":"x509","x509":{"signingCertificates":{"primary":{"certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}}},"allocationPolicy":"hashed","iotHubs":["hub1.azure-devices.net"]}`,
		`{"registrationId":"x","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"info":{"subjectName":"CN=x"}}}}}}`,
		`{"registrationId":"x","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"MDEyMzQ1Njc4OWFiY2RlZg==","secondaryKey":"!!"}}}`,
		`{"registrationId":"x","etag":"\"abc\"","createdDateTimeUtc":"2026-11-22T19:49:36.869Z","registrationState":{"registrationId":"x","status":"assigned"}}`,
		`{"initialTwin":{"tags":[[[[[[{}]]]]]]}}`,
		`[]`, `null`, `"x"`, ``, `{`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if e, err := DecodeEnrollment(data); err == nil {
			if err := ValidateEnrollment(e); err == nil {
				if _, err := json.Marshal(EnrollmentView(e, HideKeys)); err != nil {
					t.Fatalf("marshal accepted enrollment: %v", err)
				}
			}
		}
		if g, err := DecodeGroup(data); err == nil {
			if err := ValidateGroup(g); err == nil {
				if _, err := json.Marshal(GroupView(g, HideKeys)); err != nil {
					t.Fatalf("marshal accepted group: %v", err)
				}
			}
		}
	})
}
