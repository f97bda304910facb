package enroll

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"device-01", true},
		{"a", true},
		{"A.b_c:d-e", true},
		{"ends-with-dash-", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"ends.", false},
		{"ends_", false},
		{"ends:", false},
		{"has space", false},
		{"slash/id", false},
		{"ümlaut", false},
		{"query", true},
	}
	for _, tt := range tests {
		err := ValidateID("registrationId", tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && errCode(err) != dps.CodeInvalidArgument {
			t.Errorf("ValidateID(%q) code = %d, want 400004", tt.id, errCode(err))
		}
	}
}

func TestETagMatch(t *testing.T) {
	tests := []struct {
		stored, ifMatch string
		want            bool
	}{
		{"abc", "abc", true},
		{"abc", `"abc"`, true},
		{"abc", `W/"abc"`, true},
		{"abc", `""abc""`, true}, // C# v2 preview doubles the quotes
		{"abc", `\"abc\"`, true},
		{"abc", "*", true},
		{"abc", `"*"`, true},
		{"abc", "abd", false},
		{"abc", "", false},
		{"abc", `""`, false},
		{`"abc"`, "abc", true},
	}
	for _, tt := range tests {
		if got := ETagMatch(tt.stored, tt.ifMatch); got != tt.want {
			t.Errorf("ETagMatch(%q, %q) = %v, want %v", tt.stored, tt.ifMatch, got, tt.want)
		}
	}
}

func TestValidateEnrollment(t *testing.T) {
	cert := newTestCert(t, "dev-x509")
	with := func(f func(e *dps.IndividualEnrollment)) *dps.IndividualEnrollment {
		e := symEnrollment("dev1")
		f(e)
		return e
	}
	tests := []struct {
		name    string
		e       *dps.IndividualEnrollment
		wantErr string // substring of the message; "" means valid
	}{
		{"minimal symmetric key", symEnrollment("dev1"), ""},
		{"bad id", symEnrollment("dev 1"), "contains"},
		{"no attestation", with(func(e *dps.IndividualEnrollment) { e.Attestation = nil }), "attestation is required"},
		{"no attestation type", with(func(e *dps.IndividualEnrollment) { e.Attestation.Type = "" }), "attestation type is required"},
		{"unknown attestation type", with(func(e *dps.IndividualEnrollment) { e.Attestation.Type = "password" }), "not supported"},
		{"none attestation", with(func(e *dps.IndividualEnrollment) { e.Attestation.Type = "none" }), "not supported"},
		{"attestation type any case", with(func(e *dps.IndividualEnrollment) { e.Attestation.Type = "SymmetricKey" }), ""},
		{"keys 16 and 64 bytes", with(func(e *dps.IndividualEnrollment) {
			e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: key16, SecondaryKey: key64}
		}), ""},
		{"key not base64", with(func(e *dps.IndividualEnrollment) {
			e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: "not base64!"}
		}), "primaryKey is not valid base64"},
		{"key too short", with(func(e *dps.IndividualEnrollment) {
			e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{SecondaryKey: base64.StdEncoding.EncodeToString(make([]byte, 15))}
		}), "secondaryKey is 15 bytes"},
		{"key too long", with(func(e *dps.IndividualEnrollment) {
			e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(make([]byte, 65))}
		}), "primaryKey is 65 bytes"},
		{"tpm", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{EndorsementKey: testEK}}
		}), ""},
		{"tpm with a malformed endorsement key", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{EndorsementKey: "AToAAQALAAMAsgAg"}}
		}), "TPM2B_PUBLIC"},
		{"tpm without endorsement key", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{}}
		}), "endorsementKey"},
		{"tpm without member", with(func(e *dps.IndividualEnrollment) { e.Attestation = &dps.AttestationMechanism{Type: "tpm"} }), "endorsementKey"},
		{"x509 client PEM", with(func(e *dps.IndividualEnrollment) { e.Attestation = x509Client(cert.pem) }), ""},
		{"x509 client base64 DER", with(func(e *dps.IndividualEnrollment) { e.Attestation = x509Client(cert.b64DER) }), ""},
		{"x509 client base64 PEM", with(func(e *dps.IndividualEnrollment) { e.Attestation = x509Client(cert.b64PEM) }), ""},
		{"x509 client one-line PEM", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = x509Client(strings.ReplaceAll(cert.pem, "\n", ""))
		}), ""},
		{"x509 garbage certificate", with(func(e *dps.IndividualEnrollment) { e.Attestation = x509Client("aGVsbG8=") }), "cannot be read"},
		{"x509 no member", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{}}
		}), "exactly one"},
		{"x509 two members", with(func(e *dps.IndividualEnrollment) {
			a := x509Client(cert.pem)
			a.X509.CAReferences = &dps.X509CAReferences{Primary: "ca"}
			e.Attestation = a
		}), "exactly one"},
		{"x509 missing x509", with(func(e *dps.IndividualEnrollment) { e.Attestation = &dps.AttestationMechanism{Type: "x509"} }), "x509 member"},
		{"x509 signing certs on an individual enrollment", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{
				SigningCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: cert.pem}}}}
		}), "not signingCertificates"},
		{"x509 no primary", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{ClientCertificates: &dps.X509Certificates{}}}
		}), "primary certificate"},
		{"x509 info only on create", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{ClientCertificates: &dps.X509Certificates{
				Primary: &dps.X509CertificateWithInfo{Info: &dps.X509CertificateInfo{SubjectName: "CN=x"}}}}}
		}), "certificate is missing"},
		{"x509 ca references", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "my-ca"}}}
		}), ""},
		{"x509 ca references without primary", with(func(e *dps.IndividualEnrollment) {
			e.Attestation = &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{CAReferences: &dps.X509CAReferences{}}}
		}), "primary CA"},
		{"allocation policies", with(func(e *dps.IndividualEnrollment) { e.AllocationPolicy = "geoLatency" }), ""},
		{"allocation policy any case", with(func(e *dps.IndividualEnrollment) { e.AllocationPolicy = "HASHED" }), ""},
		{"bad allocation policy", with(func(e *dps.IndividualEnrollment) { e.AllocationPolicy = "random" }), "allocationPolicy \"random\" is not valid"},
		{"iotHubs without policy", with(func(e *dps.IndividualEnrollment) { e.IoTHubs = []string{"h.azure-devices.net"} }), "allocationPolicy must be specified when iotHubs"},
		{"iotHubs with policy", with(func(e *dps.IndividualEnrollment) {
			e.IoTHubs, e.AllocationPolicy = []string{"h.azure-devices.net"}, "static"
		}), ""},
		{"custom without definition", with(func(e *dps.IndividualEnrollment) { e.AllocationPolicy = "custom" }), "CustomAllocationDefinition is required"},
		{"custom relative URL", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "/api/alloc", APIVersion: "2021-10-01"}
		}), "absolute http or https"},
		{"custom ftp URL", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "ftp://x/y", APIVersion: "2021-10-01"}
		}), "absolute http or https"},
		{"custom without apiVersion", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "https://x/y"}
		}), "apiVersion is required"},
		{"custom complete", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "http://127.0.0.1:8080/alloc?code=x", APIVersion: "2021-10-01"}
		}), ""},
		{"custom policy", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "policy:contoso", APIVersion: "2021-10-01"}
		}), ""},
		{"custom policy without name", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "policy:", APIVersion: "2021-10-01"}
		}), "names no valid allocation policy"},
		{"custom policy bad name", with(func(e *dps.IndividualEnrollment) {
			e.AllocationPolicy = "custom"
			e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "policy:a/b", APIVersion: "2021-10-01"}
		}), "names no valid allocation policy"},
		{"bad provisioning status", with(func(e *dps.IndividualEnrollment) { e.ProvisioningStatus = "paused" }), "provisioningStatus"},
		{"provisioning status any case", with(func(e *dps.IndividualEnrollment) { e.ProvisioningStatus = "Disabled" }), ""},
		{"tags not an object", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(`[1]`)}
		}), "initialTwin.tags"},
		{"desired not an object", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`"x"`)}}
		}), "initialTwin.properties.desired"},
		{"bad device id", with(func(e *dps.IndividualEnrollment) { e.DeviceID = "dev/1" }), "deviceId"},
		// Twins the hub would refuse are refused on save.
		{"twin nested deeper than the hub allows", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(strings.Repeat(`{"a":`, 11) + `1` + strings.Repeat(`}`, 11))}
		}), "nesting deeper than 10"},
		{"twin tags larger than the hub allows", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(`{"a":"` + strings.Repeat("x", 4000) + `","b":"` + strings.Repeat("y", 4000) + `","c":"` + strings.Repeat("z", 1000) + `"}`)}
		}), "initialTwin.tags is"},
		{"twin property name with a dot", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"a.b":1}`)}}
		}), "contains '.'"},
		{"twin string longer than the hub allows", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"a":"` + strings.Repeat("x", 4097) + `"}`)}}
		}), "longer than 4096"},
		{"twin at the hub's limits", with(func(e *dps.IndividualEnrollment) {
			e.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10))}
		}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := json.Marshal(tt.e)
			err := ValidateEnrollment(tt.e)
			after, _ := json.Marshal(tt.e)
			if string(before) != string(after) {
				t.Errorf("ValidateEnrollment modified its argument")
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateEnrollment: %v, want success", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateEnrollment = %v, want error containing %q", err, tt.wantErr)
			}
			if errCode(err) != dps.CodeInvalidArgument {
				t.Errorf("code = %d, want 400004", errCode(err))
			}
		})
	}
}

func x509Client(cert string) *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{
		ClientCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: cert}}}}
}

func TestValidateGroup(t *testing.T) {
	cert := newTestCert(t, "root")
	tests := []struct {
		name    string
		att     *dps.AttestationMechanism
		wantErr string
	}{
		{"symmetric key", &dps.AttestationMechanism{Type: "symmetricKey"}, ""},
		{"signing certificate", &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{
			SigningCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: cert.b64DER}}}}, ""},
		{"ca references", &dps.AttestationMechanism{Type: "x509", X509: &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "ca"}}}, ""},
		{"tpm", &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{EndorsementKey: "AToAAQ=="}}, "do not support TPM"},
		{"client certificates", x509Client(cert.pem), "not clientCertificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateGroup(&dps.EnrollmentGroup{EnrollmentGroupID: "g1", Attestation: tt.att})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateGroup: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errCode(err) != dps.CodeInvalidArgument {
				t.Fatalf("ValidateGroup = %v, want 400004 containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
	}{
		{"valid", `{"registrationId":"a","attestation":{"type":"symmetricKey"}}`, ""},
		{"unknown members ignored", `{"registrationId":"a","futureMember":{"x":[1,2]}}`, ""},
		{"empty", ``, "empty"},
		{"blank", "  \n", "empty"},
		{"not JSON", `{"registrationId":`, "not valid JSON"},
		{"trailing garbage", `{"registrationId":"a"} x`, "not valid JSON"},
		{"wrong type", `{"registrationId":5}`, `"registrationId" must be a string`},
		{"array body", `[1]`, "must be an object"},
		{"too deep", `{"initialTwin":{"tags":` + strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat(`}`, 40) + `}}`, "deeper than"},
		{"deep brackets inside a string are fine", `{"deviceId":"` + strings.Repeat("[", 100) + `"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeEnrollment([]byte(tt.body))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DecodeEnrollment: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errCode(err) != dps.CodeInvalidArgument {
				t.Fatalf("DecodeEnrollment = %v, want 400004 containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCertificateInfo(t *testing.T) {
	c := newTestCert(t, "dev-01")
	info := CertificateInfo(c.cert)
	if info.SubjectName != c.subject || info.IssuerName != c.subject {
		t.Errorf("subject/issuer = %q / %q, want %q", info.SubjectName, info.IssuerName, c.subject)
	}
	if info.SerialNumber != c.serialHex {
		t.Errorf("serial = %q, want %q", info.SerialNumber, c.serialHex)
	}
	if info.Version != 3 {
		t.Errorf("version = %d, want 3", info.Version)
	}
	if len(info.SHA1Thumbprint) != 40 || strings.ToUpper(info.SHA1Thumbprint) != info.SHA1Thumbprint {
		t.Errorf("sha1 thumbprint = %q, want 40 upper-case hex digits", info.SHA1Thumbprint)
	}
	if len(info.SHA256Thumbprint) != 64 || strings.ToUpper(info.SHA256Thumbprint) != info.SHA256Thumbprint {
		t.Errorf("sha256 thumbprint = %q, want 64 upper-case hex digits", info.SHA256Thumbprint)
	}
	if !info.NotBeforeUTC.Equal(c.cert.NotBefore) || !info.NotAfterUTC.Equal(c.cert.NotAfter) {
		t.Errorf("validity = %v..%v", info.NotBeforeUTC, info.NotAfterUTC)
	}
	for _, form := range []string{c.pem, c.b64DER, c.b64PEM} {
		got, err := ParseCertificate(form)
		if err != nil || !got.Equal(c.cert) {
			t.Errorf("ParseCertificate(%.20q...) = %v", form, err)
		}
	}
}

func TestFormatNameQuoting(t *testing.T) {
	c := newTestCert(t, "a, b")
	if got, want := FormatName(c.cert.Subject), `CN="a, b", O=Contoso, C=US`; got != want {
		t.Errorf("FormatName = %q, want %q", got, want)
	}
}

// testEK is an RSA 2048 endorsement key's TPM2B_PUBLIC (base64), shaped as
// a TPM's: restricted decryption, AES-128-CFB, SHA-256 name.
const testEK = "ARoAAQALAAMAQAAAAAYAgABDABAIAAAAAAABAOZBJuI9Qngly9O5Quv52OkslO1kgCJXy4bYyJ9Pb6i/OMBXy3+T4MnioRh3LerRh58t9tacTgjQyP8P7XBQHPYnhdR7mV0Pvi41t3/UCmDcK4ojDy4Z9gupkE2okL8I+ELTTVFhCMaDizIlwkMt7+ylOpuzpLejwGsJJ1hbIYz8SRIx1rFFj8WiyhUDM8Ri8ZBJCN7r9eFNwsMauzWGbhUJg+pkD5dXBk1W26sNxO0hz2q0bGW8d+klrdA5zVOTBKiRdFlunP73MAfWn1P2qZke8ZNk1GOXQSLUAvoxFIFOirs0uw/QGfGBWTwoUliZX87vRxniX6PwqiXsJIDLNys="
