package hub

import "github.com/dpsd/dpsd/internal/hub/azurehub"

// The Azure IoT hub REST names the registrar uses unqualified, from when they
// lived in this package. They keep registrar.go unchanged while it is being
// worked on elsewhere; once it names them azurehub.X, they can go. Other
// code uses package azurehub directly.
type (
	Authentication         = azurehub.Authentication
	Capabilities           = azurehub.Capabilities
	CertificateAuthorities = azurehub.CertificateAuthorities
	Client                 = azurehub.Client
	ClientOption           = azurehub.ClientOption
	Device                 = azurehub.Device
	Registry               = azurehub.Registry
	ReportedImporter       = azurehub.ReportedImporter
	SymmetricKey           = azurehub.SymmetricKey
	Twin                   = azurehub.Twin
	TwinProperties         = azurehub.TwinProperties
	X509Thumbprint         = azurehub.X509Thumbprint
)

// Authentication types and statuses of a device identity.
const (
	AuthCertificateAuthority = azurehub.AuthCertificateAuthority
	AuthSAS                  = azurehub.AuthSAS
	AuthSelfSigned           = azurehub.AuthSelfSigned
	StatusEnabled            = azurehub.StatusEnabled
)

// Errors a Registry returns.
var (
	ErrExists       = azurehub.ErrExists
	ErrNotFound     = azurehub.ErrNotFound
	ErrPrecondition = azurehub.ErrPrecondition
)

// Functions of the REST client.
var (
	NewClient   = azurehub.NewClient
	WithRootCAs = azurehub.WithRootCAs
)
