-- wrk script: print one line per answer outside 2xx, so the bench can name the statuses
-- (wrk itself only counts them).
response = function(status, headers, body)
  if status < 200 or status > 299 then
    io.write("non-2xx ", status, "\n")
  end
end
