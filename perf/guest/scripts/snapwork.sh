# Snapshot test work (volt.run=snapwork): ten steps a second apart, each written to the disk
# and synced, so a snapshot taken mid-way leaves disk writes to do after the restore.
i=0
while [ $i -lt 10 ]; do
  i=$((i + 1))
  echo "$i" > /snapwork
  sync
  echo "VOLT-SNAPWORK $i"
  sleep 1
done
