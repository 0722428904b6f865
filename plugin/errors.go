package plugin

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/structspb"
)

// RecoverableError marks an error the Nomad client may retry (Recoverable)
// or must not (a configuration the user has to change). On the wire it is a
// FailedPrecondition status carrying a structs.RecoverableError detail.
type RecoverableError struct {
	Err         error
	Recoverable bool
}

// Error returns the wrapped message.
func (e *RecoverableError) Error() string { return e.Err.Error() }

// Unwrap exposes the cause to errors.Is/As.
func (e *RecoverableError) Unwrap() error { return e.Err }

// NewRecoverableError wraps err so the client retries the operation.
func NewRecoverableError(err error) error {
	return &RecoverableError{Err: err, Recoverable: true}
}

// NewFatalError wraps err so the client does not retry: the task fails with
// the message shown to the user.
func NewFatalError(err error) error {
	return &RecoverableError{Err: err, Recoverable: false}
}

// IsRecoverable reports whether err was marked retryable.
func IsRecoverable(err error) bool {
	var re *RecoverableError
	return errors.As(err, &re) && re.Recoverable
}

// toStatus encodes a driver error for the wire. Ordinary errors must never
// become Unavailable or Canceled, which the client reads as a plugin crash,
// so everything unmarked is Unknown, and context ends are reported as
// FailedPrecondition/DeadlineExceeded with the message kept.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var re *RecoverableError
	if errors.As(err, &re) {
		st := status.New(codes.FailedPrecondition, err.Error())
		if withDetail, derr := st.WithDetails(&structspb.RecoverableError{Recoverable: re.Recoverable}); derr == nil {
			st = withDetail
		}
		return st.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		code := status.Code(err)
		if code == codes.Unavailable || code == codes.Canceled {
			return status.Error(codes.Unknown, err.Error())
		}
		return err
	}
	return status.Error(codes.Unknown, err.Error())
}

// FromStatus decodes a wire error as the Nomad client does: a status with a
// RecoverableError detail becomes a *RecoverableError.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if re, ok := d.(*structspb.RecoverableError); ok {
			return &RecoverableError{Err: fmt.Errorf("%s", st.Message()), Recoverable: re.GetRecoverable()}
		}
	}
	return err
}
