package kernel

// The generated layouts, for the external layout test (package
// kernel_test imports wire, which imports kernel).
type (
	RecHdr     = parryRecHdr
	ExecRec    = parryExecRec
	ExitRec    = parryExitRec
	ConnectRec = parryConnectRec
	OpenRec    = parryOpenRec
	PrivRec    = parryPrivRec
	TrieKey    = parryTrieKey
	ExeKey     = parryExeKey
)
