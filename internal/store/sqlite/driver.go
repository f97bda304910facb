package sqlite

// The driver is pure Go (SQLite transpiled to Go), so dpsd builds and runs
// with nothing but a Go toolchain; docs/benchmarks.md ("Embedded store
// driver") records the measurements behind the choice. Everything else in
// this package speaks plain database/sql and SQL, so this file is the only
// place that names the driver.
import _ "modernc.org/sqlite"

const driverName = "sqlite"
