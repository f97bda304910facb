package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dpsd/dpsd/internal/store"
)

// Apply implements store.Batcher with one transaction. Like Put it is not
// cancelled by its caller once sent.
func (s *Store) Apply(ctx context.Context, writes []store.Write) ([]store.Record, error) {
	recs, err := s.apply(ctx, writes)
	var be *store.BatchError
	if !errors.As(err, &be) {
		s.health.Observe(err)
	}
	return recs, err
}

func (s *Store) apply(ctx context.Context, writes []store.Write) ([]store.Record, error) {
	if err := store.CheckWrites(writes); err != nil {
		return nil, err
	}
	if len(writes) == 0 {
		return nil, nil
	}
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("apply %d writes: %w", len(writes), err)
	}
	// Each put gets its etag before anything is sent, so that a commit
	// whose answer was lost can be recognised by it.
	recs := make([]store.Record, len(writes))
	for i, w := range writes {
		if !w.Delete {
			recs[i] = w.Record
			recs[i].ETag = newETag()
		}
	}
	var failed *store.BatchError
	err := s.write(ctx, func(conn *pgxpool.Conn, ctx context.Context) error {
		failed = nil
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		for i, w := range writes {
			cerr, err := applyOne(ctx, tx, w, &recs[i])
			if err != nil {
				return err
			}
			if cerr != nil {
				failed = &store.BatchError{Index: i, Kind: w.Record.Kind, ID: w.Record.ID, Err: cerr}
				return nil // the deferred rollback undoes the earlier writes
			}
		}
		return tx.Commit(ctx)
	})
	switch {
	case err == nil && failed != nil:
		return nil, failed
	case err == nil:
		return recs, nil
	case ambiguous(err) && !s.closed.Load():
		if s.committed(writes, recs) {
			return recs, nil
		}
	}
	return nil, fmt.Errorf("apply %d writes: %w", len(writes), s.mapErr(ctx, err))
}

// applyOne performs w inside tx, filling the stored record of a put into
// out. A failed condition is returned as cerr; err is for failures of the
// database.
func applyOne(ctx context.Context, tx pgx.Tx, w store.Write, out *store.Record) (cerr, err error) {
	if w.Delete {
		tag, err := tx.Exec(ctx, sqlDelete, string(w.Record.Kind), key(w.Record.ID), w.Cond.IfMatch)
		switch {
		case err != nil:
			return nil, err
		case tag.RowsAffected() > 0:
			return nil, nil
		case w.Cond.IfMatch != "":
			return store.ErrPrecondition, nil
		default:
			return store.ErrNotFound, nil
		}
	}
	if w.Cond.MustNotExist && w.Cond.IfMatch != "" {
		// As Put answers it: a record cannot both exist and not exist.
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM "+recordsTable+" WHERE kind = $1 AND id_key = $2", string(w.Record.Kind), key(w.Record.ID)).Scan(&one)
		switch {
		case err == nil:
			return store.ErrExists, nil
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrPrecondition, nil
		}
		return nil, err
	}
	q, args, condErr := putStatement(w.Record, w.Cond, out.ETag)
	err = tx.QueryRow(ctx, q, args...).Scan(&out.ID, &out.Created, &out.Updated)
	switch {
	case err == nil:
		out.Created, out.Updated = out.Created.UTC(), out.Updated.UTC()
		return nil, nil
	case errors.Is(err, pgx.ErrNoRows) && condErr != nil:
		return condErr, nil
	}
	return nil, err
}

// committed reports whether a batch whose commit went unanswered was
// committed, by the etag of its last put (all of them or none are), and
// if so fills recs from what is stored. A batch of deletes alone cannot be
// told and counts as not committed.
func (s *Store) committed(writes []store.Write, recs []store.Record) bool {
	last := -1
	for i, w := range writes {
		if !w.Delete {
			last = i
		}
	}
	if last < 0 {
		return false
	}
	got, ok := s.resolve(writes[last].Record.Kind, writes[last].Record.ID, recs[last].ETag)
	if !ok {
		return false
	}
	// The last put is stored as written; the earlier ones committed with
	// it, and a later write of the batch may have replaced them, so their
	// times are read back where they still carry the batch's etag.
	recs[last] = got
	for i, w := range writes[:last] {
		if w.Delete {
			continue
		}
		if r, ok := s.resolve(w.Record.Kind, w.Record.ID, recs[i].ETag); ok {
			recs[i] = r
		}
	}
	return true
}
