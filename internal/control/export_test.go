package control

// Helpers of the package's own tests, for its external tests (client_test.go).
var (
	CheckNoLeak  = checkNoLeak
	ManyBindings = manyBindings
	MustBinding  = mustBinding
	PipeFDs      = pipeFDs
)
