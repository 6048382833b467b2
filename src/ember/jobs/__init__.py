"""Batch jobs: the OpenAI Files and Batches APIs over a persistent queue of lines.

records.py   plain data: FileRecord, BatchRecord, Line, Claim, LineResult, LineCounts
queue.py     LineQueue: the protocol every queue of batch lines meets (SQLite here, Redis Streams
             across nodes in redis_queue.py)
sqlite_queue.py  the embedded default: lines, claims and results in state/jobs.db
store.py     JobStore: file and batch records (SQLite, state/jobs.db); file bytes under files/
files.py     upload, read and delete file bytes: streamed to a temporary file, renamed when whole
batches.py   validate an input file into lines; build the output and error files at finalizing
runner.py    the background task: claims lines, runs each through the app in-process as the
             batch's key, retries, finalizes, expires
service.py   Jobs: the parts above built and closed together (app.py's lifespan, Services.jobs)
redis_queue.py  the LineQueue over Redis Streams (EMBER_REDIS_URL): several nodes, one batch
schedules.py batches on a cron schedule; metrics.py: the Prometheus figures of batches
"""
