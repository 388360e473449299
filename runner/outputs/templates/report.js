(function(){
  var rows=Array.prototype.slice.call(document.querySelectorAll('tr.row'));
  var type=document.getElementById('f-type'),status=document.getElementById('f-status');
  var q=document.getElementById('f-q'),shown=document.getElementById('shown');
  var text=new Map();
  function apply(){
    var t=type.value,s=status.value,needle=q.value.trim().toLowerCase(),n=0;
    rows.forEach(function(r){
      var ok=(!t||r.dataset.type===t)&&(!s||r.dataset.status===s);
      if(ok&&needle){
        if(!text.has(r))text.set(r,r.textContent.toLowerCase());
        ok=text.get(r).indexOf(needle)>=0;
      }
      r.hidden=!ok; if(ok)n++;
    });
    shown.textContent=n+' of '+rows.length+' rows shown';
  }
  type.addEventListener('change',apply);status.addEventListener('change',apply);
  q.addEventListener('input',apply);apply();
})();
