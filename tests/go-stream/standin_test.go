package conmontest

// The fixture's TestMain can turn the test binary into the stand-in
// journal of ../go/journal_test.go; this suite has no journal tests.
const standInEnv = "RINGMON_JOURNAL_STAND_IN"

func standInProcess() int { return 0 }
