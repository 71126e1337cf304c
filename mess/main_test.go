package mess_test

import (
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
)

func TestMain(m *testing.M) { backends.Main(m) }
