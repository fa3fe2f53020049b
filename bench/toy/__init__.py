"""The toy task suite and the toy teacher/student pair that the quickstart and the tests run on."""
