{
  "targets": [
    {
      "target_name": "seek",
      "sources": ["seek.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
