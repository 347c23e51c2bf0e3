-- wrk script for the manifest GET/HEAD scenario (bench/scenarios.py runs it).
-- Arguments (after --): METHOD EXPECTED_DIGEST EXPECTED_LENGTH ACCEPT
-- Every response is checked: status 200, the manifest's Docker-Content-Digest and
-- Content-Length. done() prints one JSON line that starts with BENCH_JSON.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = args[1]
  expected_digest = args[2]
  expected_length = args[3]
  wrk.headers["Accept"] = args[4]
  good = 0
  bad = 0
  first_bad = ""
end

function response(status, headers, body)
  local digest, length
  for name, value in pairs(headers) do
    local lower = string.lower(name)
    if lower == "docker-content-digest" then
      digest = value
    elseif lower == "content-length" then
      length = value
    end
  end
  if status == 200 and digest == expected_digest and length == expected_length then
    good = good + 1
  else
    bad = bad + 1
    if first_bad == "" then
      first_bad = "status " .. status .. " digest " .. tostring(digest) .. " length " .. tostring(length)
    end
  end
end

function done(summary, latency, requests)
  local good_total, bad_total, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    good_total = good_total + thread:get("good")
    bad_total = bad_total + thread:get("bad")
    local sample = thread:get("first_bad")
    if first == "" and sample ~= nil then
      first = sample
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"good":%d,"bad":%d,"first_bad":"%s",' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, good_total, bad_total, first,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
