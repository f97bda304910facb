package store

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestKindsListed checks that Kinds holds every Kind constant of the
// package, once.
func TestKindsListed(t *testing.T) {
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var consts []Kind
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Kind" {
					continue
				}
				for _, v := range vs.Values {
					if lit, ok := v.(*ast.BasicLit); ok {
						s, _ := strconv.Unquote(lit.Value)
						consts = append(consts, Kind(s))
					}
				}
			}
		}
	}
	slices.Sort(consts)
	listed := slices.Sorted(slices.Values(Kinds))
	if !slices.Equal(consts, listed) {
		t.Errorf("Kind constants %q, Kinds lists %q", consts, listed)
	}
	for _, k := range Watched {
		if !slices.Contains(Kinds, k) {
			t.Errorf("watched kind %q is not in Kinds", k)
		}
	}
}
