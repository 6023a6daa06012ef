# Reads back what snapwork.sh left on the disk (volt.run=snapread).
echo "VOLT-SNAPWORK-READ $(cat /snapwork 2>/dev/null || echo none)"
