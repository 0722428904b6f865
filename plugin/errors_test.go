package plugin

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRecoverableErrorRoundTrip(t *testing.T) {
	for _, rec := range []bool{true, false} {
		var err error = &RecoverableError{Err: errors.New("engine busy"), Recoverable: rec}
		wire := toStatus(fmt.Errorf("start: %w", err))
		if status.Code(wire) != codes.FailedPrecondition {
			t.Fatalf("code %v", status.Code(wire))
		}
		back := FromStatus(wire)
		var re *RecoverableError
		if !errors.As(back, &re) || re.Recoverable != rec || re.Error() != "start: engine busy" {
			t.Fatalf("round trip: %#v", back)
		}
		if IsRecoverable(back) != rec {
			t.Fatal("IsRecoverable disagrees")
		}
	}
}

// The client reads Unavailable and Canceled as a crashed plugin, so an
// ordinary error must never come out as either.
func TestNoCrashCodesForOrdinaryErrors(t *testing.T) {
	for _, err := range []error{
		errors.New("plain"),
		context.Canceled,
		status.Error(codes.Unavailable, "docker down"),
		status.Error(codes.Canceled, "cancelled"),
	} {
		c := status.Code(toStatus(err))
		if c == codes.Unavailable || c == codes.Canceled || c == codes.OK {
			t.Errorf("%v became %v", err, c)
		}
	}
	if toStatus(nil) != nil {
		t.Error("nil must stay nil")
	}
}
