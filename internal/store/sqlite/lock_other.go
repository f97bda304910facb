//go:build !unix

package sqlite

import "os"

// haveFlock tells Open that lockFile cannot detect another Store on this
// platform, so Open does without the key index, which needs that
// assurance.
const haveFlock = false

func lockFile(string, bool) (*os.File, error) { return nil, nil }
